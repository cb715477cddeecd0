"""/healthz and /readyz against real dependencies: the shared Redis, a private
redis-server that the test kills, and a database connection pointed at a closed port."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from tests.processes import RedisServer, free_port


def _redis_at(url: str) -> dict:
    """Settings that point the cache (django-redis) and the Celery broker at url."""
    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["LOCATION"] = url
    return {"CACHES": caches, "CELERY_BROKER_URL": url}


def _oks(response) -> dict:
    """The dependency checks that decide readiness (the worker line is only reported by
    default; test_readyz_reports_the_worker... covers it)."""
    return {name: result["ok"] for name, result in response.json()["checks"].items() if name != "worker"}


@pytest.fixture
def private_redis():
    with RedisServer() as server:
        yield server


def test_healthz_is_200(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_healthz_does_not_depend_on_redis(client):
    with override_settings(**_redis_at(f"redis://127.0.0.1:{free_port()}/0")):
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_readyz_is_200_with_every_dependency_up(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert _oks(response) == {"database": True, "redis": True, "broker": True}


@pytest.mark.slow
@pytest.mark.django_db
def test_readyz_turns_503_when_redis_goes_down(client, private_redis):
    watcher = private_redis.client()
    with override_settings(**_redis_at(private_redis.url)):
        received = watcher.info("stats")["total_connections_received"]
        response = client.get("/readyz")
        assert response.status_code == 200, response.json()
        # Both checks really talked to this server, not to a pooled connection elsewhere.
        assert watcher.info("stats")["total_connections_received"] - received >= 2

        private_redis.stop()
        response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert _oks(response) == {"database": True, "redis": False, "broker": False}
    assert "Connection" in body["checks"]["redis"]["error"]


@pytest.mark.django_db
def test_readyz_names_the_broker_when_only_the_broker_is_down(client):
    with override_settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert _oks(response) == {"database": True, "redis": True, "broker": False}
    assert response.json()["checks"]["broker"]["error"]


@pytest.mark.django_db(transaction=True)
def test_readyz_turns_503_when_the_database_is_unreachable(client, tmp_path):
    if connection.vendor == "sqlite":
        unreachable = {"NAME": str(tmp_path / "no-such-directory" / "db.sqlite3")}
    else:
        unreachable = {"HOST": "127.0.0.1", "PORT": str(free_port())}
    connection.close()
    try:
        with mock.patch.dict(connection.settings_dict, unreachable):
            response = client.get("/readyz")
    finally:
        connection.close()  # drop the failed connection; the next query reconnects normally

    assert response.status_code == 503
    assert _oks(response) == {"database": False, "redis": True, "broker": True}
    assert "OperationalError" in response.json()["checks"]["database"]["error"]


@pytest.mark.django_db
def test_readyz_reports_the_worker_and_fails_on_it_only_when_asked(client, settings):
    from django_redis import get_redis_connection

    from config.heartbeat import _key

    redis = get_redis_connection("default")
    # No worker heartbeat of this run: the web side is still ready, and says who is missing.
    body = client.get("/readyz").json()
    assert body["checks"]["worker"]["ok"] is False and "no Celery worker" in body["checks"]["worker"]["error"]
    assert client.get("/readyz").status_code == 200
    settings.READYZ_REQUIRES_WORKER = True
    assert client.get("/readyz").status_code == 503

    key = _key("worker", "readyz-test@host")
    redis.set(key, '{"hostname": "readyz-test@host"}', ex=30)
    try:
        response = client.get("/readyz")
        assert response.status_code == 200 and response.json()["checks"]["worker"] == {"ok": True, "workers": 1}
    finally:
        redis.delete(key)
