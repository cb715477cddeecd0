"""GET /metrics: who may read it, and that its numbers follow what happens: a signed WeCom
callback moves the callback counters and the queue, a real Celery worker's counters reach
the exporter through the shared multiprocess directory, and the state read at scrape time
(stuck outbox rows, a certificate, sources that are down) is right."""

from __future__ import annotations

import base64
import copy
import ipaddress
import os
import secrets
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from config.celery import app
from routing.models import ModelBackend
from tests.e2e.conftest import CeleryWorker
from tests.fakes.model import FakeModel
from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET, FakeWeCom, wecom_callback, wecom_text_xml
from tests.ops.conftest import write_certificate
from tests.processes import free_port, wait_until

TOKEN = "metrics-token-" + "x" * 24
OUTSIDER = "203.0.113.9"


def scrape(client, **headers) -> str:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=")
    return response.content.decode()


def value(body: str, name: str, **labels: str) -> float:
    """The sample `name` with these labels (0 when absent)."""
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def present(body: str, name: str) -> bool:
    return any(s.name == name for f in text_string_to_metric_families(body) for s in f.samples)


# -- who may read it ------------------------------------------------------------------


@pytest.mark.django_db
class TestAccess:
    def test_loopback_may_read_it_without_a_token(self, client):
        assert "switchboard_callbacks_total" in scrape(client)

    def test_others_need_the_bearer_token(self, client, settings):
        settings.METRICS_TOKEN = TOKEN
        assert client.get("/metrics", REMOTE_ADDR=OUTSIDER).status_code == 403
        wrong = client.get("/metrics", REMOTE_ADDR=OUTSIDER, HTTP_AUTHORIZATION=f"Bearer {TOKEN}x")
        assert wrong.status_code == 403
        assert b"METRICS_TOKEN" in wrong.content  # says how to get in
        assert "switchboard_queue_depth" in scrape(client, REMOTE_ADDR=OUTSIDER, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    def test_no_token_configured_means_no_bearer_gets_in(self, client, settings):
        settings.METRICS_TOKEN = ""
        for header in ("Bearer ", "Bearer", ""):
            assert client.get("/metrics", REMOTE_ADDR=OUTSIDER, HTTP_AUTHORIZATION=header).status_code == 403

    def test_allowed_networks_are_configurable(self, client, settings):
        settings.METRICS_ALLOWED_CIDRS = [ipaddress.ip_network("198.51.100.0/24")]
        assert client.get("/metrics").status_code == 403  # loopback is no longer in
        scrape(client, REMOTE_ADDR="198.51.100.20")

    def test_a_forwarded_address_counts_only_from_a_trusted_proxy(self, client, settings):
        settings.METRICS_ALLOWED_CIDRS = [ipaddress.ip_network("10.0.0.0/8")]
        settings.TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
        scrape(client, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.1.2.3")
        assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=OUTSIDER).status_code == 403
        forged = client.get("/metrics", REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR="10.1.2.3")
        assert forged.status_code == 403


# -- what it counts -------------------------------------------------------------------


def make_bot(api_base_url: str = "http://127.0.0.1:9", backend: ModelBackend | None = None) -> Bot:
    return Bot.objects.create(
        name="helpdesk",
        platform="wecom",
        app_id=DEFAULT_CORP_ID,
        app_secret=DEFAULT_CORP_SECRET,
        token=secrets.token_urlsafe(12),
        encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
        api_base_url=api_base_url,
        extra={"agent_id": 1000002},
        default_backend=backend,
    )


def deliver(client, bot: Bot, text: str, msg_id: int) -> None:
    query, body = wecom_callback(bot, wecom_text_xml(bot.app_id, "zhangsan", text, msg_id, 1000002))
    response = client.post(f"{bot.callback_path}?{query}", body, content_type="text/xml")
    assert response.status_code == 200, response.content


@pytest.fixture
def empty_queue():
    app.control.purge()
    yield
    app.control.purge()  # no later worker of this run should find our task


@pytest.mark.django_db(transaction=True)
def test_a_callback_moves_the_counters_the_queue_and_the_outbox(client, settings, empty_queue):
    bot = make_bot()
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    before = scrape(client)

    deliver(client, bot, "hello", 7001)

    after = scrape(client)
    callbacks, accepted = "switchboard_callbacks_total", {"platform": "wecom", "outcome": "accepted"}
    assert value(after, callbacks, **accepted) == value(before, callbacks, **accepted) + 1
    acks = "switchboard_callback_ack_seconds_count"
    assert value(after, acks, platform="wecom") == value(before, acks, platform="wecom") + 1
    assert value(after, "switchboard_queue_depth", queue=queue) == 1  # no worker runs
    assert value(after, "switchboard_outbox_stuck", status="received") == 0  # it only just arrived
    assert value(after, "switchboard_scrape_source_up", source="broker") == 1

    InboundMessage.objects.update(received_at=timezone.now() - timedelta(seconds=settings.OUTBOX_RECEIVED_AFTER + 5))
    InboundMessage.objects.create(
        bot=bot,
        platform_message_id="7002",
        status=MessageStatus.PROCESSING,
        lease_until=timezone.now() - timedelta(seconds=5),
    )  # its worker died
    InboundMessage.objects.create(
        bot=bot,
        platform_message_id="7003",
        status=MessageStatus.PROCESSING,
        lease_until=timezone.now() + timedelta(seconds=settings.OUTBOX_STUCK_AFTER),
    )
    stuck = scrape(client)
    assert value(stuck, "switchboard_outbox_stuck", status="received") == 1
    assert value(stuck, "switchboard_outbox_stuck", status="processing") == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_workers_counters_reach_the_exporter(client, tmp_path, monkeypatch, empty_queue):
    """gunicorn and the worker share PROMETHEUS_MULTIPROC_DIR (deploy.sh, start.sh): the
    exporter adds up the worker's files, so the reply it sent shows at /metrics."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    with FakeWeCom() as wecom, FakeModel() as model:
        backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
        bot = make_bot(wecom.url, backend)
        with CeleryWorker(extra_env={"PROMETHEUS_MULTIPROC_DIR": str(shared)}):
            deliver(client, bot, "hello", 7101)
            wecom.wait_for(r"/message/send", 1)
            wait_until(
                lambda: InboundMessage.objects.get(platform_message_id="7101").status == MessageStatus.REPLIED,
                15,
                "the message is marked replied",
            )
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
            body = scrape(client)
            workers = value(body, "switchboard_celery_workers")

    assert value(body, "switchboard_messages_total", platform="wecom", bot="helpdesk", status="replied") == 1
    assert value(body, "switchboard_end_to_end_seconds_count", platform="wecom") == 1
    assert value(body, "switchboard_model_seconds_count", backend="main") == 1
    assert value(body, "switchboard_model_retries_total", backend="main") == 0
    assert value(body, "switchboard_rate_limit_wait_seconds_count") == 1
    assert workers == 1  # its heartbeat names our queue


def test_sources_that_do_not_answer_are_reported_not_fatal(client, settings, db):
    closed = f"redis://127.0.0.1:{free_port()}/0"
    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["LOCATION"] = closed
    settings.CACHES = caches
    settings.CELERY_BROKER_URL = closed
    body = scrape(client)
    assert value(body, "switchboard_scrape_source_up", source="redis") == 0
    assert value(body, "switchboard_scrape_source_up", source="broker") == 0
    assert value(body, "switchboard_scrape_source_up", source="database") == 1
    assert not present(body, "switchboard_queue_depth")
    assert present(body, "switchboard_outbox_stuck")


def test_the_certificate_expiry_is_exported(client, settings, db, tmp_path):
    assert not present(scrape(client), "switchboard_tls_certificate_expiry_timestamp_seconds")
    expires = write_certificate(tmp_path / "fullchain.pem", days=30)
    settings.TLS_CERTIFICATE_PATH = str(tmp_path / "fullchain.pem")
    body = scrape(client)
    assert value(body, "switchboard_tls_certificate_expiry_timestamp_seconds") == expires.timestamp()
    assert value(body, "switchboard_scrape_source_up", source="certificate") == 1
