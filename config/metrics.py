"""GET /metrics for Prometheus: the counters and histograms every process records, plus
the state read at scrape time (queue depth, outbox rows that are stuck, live workers,
Celery beat, the TLS certificate's expiry).

Gunicorn runs several processes and Celery workers are others: with
PROMETHEUS_MULTIPROC_DIR set (deploy.sh and scripts/start.sh set it, to the same
directory for gunicorn and Celery), every process writes its values there and this view
adds them all up, so the worker's counters show here too. Without it, the view shows
this process's own values.

Open to METRICS_ALLOWED_CIDRS (default: loopback), or to anyone who sends
`Authorization: Bearer <METRICS_TOKEN>`.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import prometheus_client
from cryptography import x509
from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from config.broker import queue_depth
from config.clientip import client_ip

Collected = Iterator[Metric]


def _queue_depth() -> Collected:
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    depth = queue_depth(queue)
    family = GaugeMetricFamily("switchboard_queue_depth", "Tasks waiting in the Celery queue", labels=["queue"])
    family.add_metric([queue], depth)
    yield family


def _outbox() -> Collected:
    from channels_app.models import InboundMessage, MessageStatus

    now = timezone.now()
    counts = (
        InboundMessage.objects.filter(
            Q(status=MessageStatus.RECEIVED, received_at__lt=now - timedelta(seconds=settings.OUTBOX_RECEIVED_AFTER))
            | Q(status=MessageStatus.PROCESSING, lease_until__lt=now)
        )
        .order_by()
        .values_list("status")
        .annotate(count=Count("pk"))
    )
    stuck = {MessageStatus.RECEIVED: 0, MessageStatus.PROCESSING: 0}
    for status, count in counts:
        stuck[status] = count
    family = GaugeMetricFamily(
        "switchboard_outbox_stuck",
        "Messages waiting past OUTBOX_RECEIVED_AFTER, or processing with a lapsed lease",
        labels=["status"],
    )
    for status, count in stuck.items():
        family.add_metric([str(status)], count)
    yield family


def _heartbeats() -> Collected:
    from config.heartbeat import beat_last_seen, live_workers

    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    workers = [w for w in live_workers() if queue in w.get("queues", [])]
    yield GaugeMetricFamily(
        "switchboard_celery_workers", "Celery workers consuming our queue whose heartbeat is fresh", value=len(workers)
    )
    last = beat_last_seen()
    if last is not None:
        yield GaugeMetricFamily(
            "switchboard_beat_last_seen_timestamp_seconds", "When Celery beat last queued a task", value=last
        )


def _certificate() -> Collected:
    if not settings.TLS_CERTIFICATE_PATH:
        return
    certificate = x509.load_pem_x509_certificate(Path(settings.TLS_CERTIFICATE_PATH).read_bytes())
    yield GaugeMetricFamily(
        "switchboard_tls_certificate_expiry_timestamp_seconds",
        "When the TLS certificate nginx serves expires",
        value=certificate.not_valid_after_utc.timestamp(),
    )


class StateCollector:
    """What Prometheus should see at scrape time rather than as counted events. Each
    source that fails is reported as switchboard_scrape_source_up 0 and left out."""

    SOURCES = {"broker": _queue_depth, "database": _outbox, "redis": _heartbeats, "certificate": _certificate}

    def collect(self) -> Collected:
        up = GaugeMetricFamily(
            "switchboard_scrape_source_up", "Whether the state read at scrape time could be read", labels=["source"]
        )
        for name, source in self.SOURCES.items():
            try:
                collected = list(source())
            except Exception:  # a source being down is itself what this metric reports
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from collected
        yield up


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    offered = request.META.get("HTTP_AUTHORIZATION", "")
    if token and hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
        return True
    address = client_ip(request)
    return address is not None and any(address in network for network in settings.METRICS_ALLOWED_CIDRS)


def metrics(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return HttpResponse(
            "Forbidden: /metrics answers METRICS_ALLOWED_CIDRS or a bearer token (METRICS_TOKEN).\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = prometheus_client.REGISTRY
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector())
    body = prometheus_client.generate_latest(counted) + prometheus_client.generate_latest(state)
    return HttpResponse(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)
