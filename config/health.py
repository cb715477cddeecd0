"""Liveness and readiness for load balancers, systemd and the deploy script."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django_redis import get_redis_connection
from kombu import Connection


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    get_redis_connection("default").ping()


def _check_broker() -> None:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as broker:
        broker.ensure_connection(max_retries=1, timeout=2)


CHECKS = {"database": _check_database, "redis": _check_redis, "broker": _check_broker}


def _worker_line() -> dict:
    """Whether a Celery worker has a live heartbeat (config.heartbeat). Reported always;
    it makes the web process "not ready" only with READYZ_REQUIRES_WORKER, because a load
    balancer that drops every web server when the workers die would stop the callbacks
    from being recorded at all, while a live web server keeps them safe in the outbox
    for the worker that comes back."""
    from config.heartbeat import WORKER_TTL, live_workers

    try:
        workers = live_workers()
    except Exception as exc:  # Redis down: already the redis line's failure
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if workers:
        return {"ok": True, "workers": len(workers)}
    return {
        "ok": False,
        "error": f"no Celery worker heartbeat in the last {WORKER_TTL} s: messages are "
        "recorded but nobody answers them; start a worker",
    }


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    results = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # any failure of a dependency means "not ready"
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        else:
            results[name] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
    ready = all(r["ok"] for r in results.values())
    results["worker"] = _worker_line()
    if settings.READYZ_REQUIRES_WORKER:
        ready = ready and results["worker"]["ok"]
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": results}, status=200 if ready else 503)
