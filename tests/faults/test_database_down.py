"""PostgreSQL goes away under a running gunicorn (a proxy in front of it is cut): the
callback answers 503 so the platform delivers again, nothing is half-written, and the
platform's retry of the very same request is accepted once the database is back. And a
worker whose connection died while idle answers the next message on a new one."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test import Client

from channels_app.models import InboundMessage, MessageStatus
from tests.e2e.conftest import CeleryWorker, database_url_for_subprocess
from tests.faults.conftest import Gunicorn, TcpProxy, post, signed_callback
from tests.processes import wait_until

pytestmark = pytest.mark.slow


def post_locally(bot, text: str, msg_id: int):
    """The callback through this process's view (its own database connection)."""
    path, body = signed_callback(bot, text, msg_id)
    return Client().post(path, body, content_type="text/xml")


def test_callbacks_get_503_while_the_database_is_away_and_the_same_retry_is_accepted_once(bot):
    settings = connection.settings_dict
    host, port = settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)
    if settings["ENGINE"].endswith("sqlite3"):
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...)")
    proxy = TcpProxy(host, port).start()
    proxied = database_url_for_subprocess().replace(f"@{host}:{port}/", f"@127.0.0.1:{proxy.port}/")
    try:
        with Gunicorn(DATABASE_URL=proxied) as web:
            assert post(web.url, *signed_callback(bot, "warm up", 8000)).status_code == 200
            proxy.stop()

            # The bot is still in the view's cache: the INSERT is what fails.
            cached = signed_callback(bot, "while the database is away", 8001)
            assert post(web.url, *cached).status_code == 503
            # Past the cache: finding the bot is what fails, with the same answer.
            time.sleep(2.2)
            uncached = signed_callback(bot, "still away", 8002)
            assert post(web.url, *uncached).status_code == 503
            assert not InboundMessage.objects.filter(platform_message_id__in=["8001", "8002"]).exists()

            proxy.start()
            # WeCom re-delivers the same request (same nonce): not refused as a replay.
            assert post(web.url, *cached).status_code == 200
            assert post(web.url, *uncached).status_code == 200
            assert post(web.url, *cached).status_code == 200  # and once more: a re-delivery, not a new row
        rows = InboundMessage.objects.filter(platform_message_id__in=["8001", "8002"])
        assert sorted(rows.values_list("text", flat=True)) == ["still away", "while the database is away"]
    finally:
        proxy.stop()


def test_a_worker_whose_connection_died_while_idle_answers_the_next_message_without_the_sweeper(bot, wecom):
    """PostgreSQL restarted between two messages: the worker's kept connection is dead,
    and nothing checks it before use (DATABASE_HEALTH_CHECKS is off by default). The
    task's first query fails; the task is retried a second later on a new connection,
    long before the sweeper (which does not even run here) would find the row."""
    if connection.settings_dict["ENGINE"].endswith("sqlite3"):
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...)")
    with CeleryWorker(concurrency=1) as worker:
        assert post_locally(bot, "first", 8101).status_code == 200
        wecom.wait_for(r"/message/send", 1, timeout=30)
        wait_until(
            lambda: InboundMessage.objects.get(platform_message_id="8101").status == MessageStatus.REPLIED,
            timeout=20,
            what="first message replied",
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone()[0] >= 1, "the worker kept no connection to cut"

        assert post_locally(bot, "second", 8102).status_code == 200
        sent = wecom.wait_for(r"/message/send", 2, timeout=15)
        assert sent[1].json()["text"]["content"] == "[m1] second (history=2)"
        # The send reaches the fake a moment before the task records the reply.
        wait_until(
            lambda: InboundMessage.objects.get(platform_message_id="8102").status == MessageStatus.REPLIED,
            timeout=10,
            what="second message replied",
        )
        assert InboundMessage.objects.get(platform_message_id="8102").attempts == 1
        assert "Retry in 1s" in worker.output()
    time.sleep(0.5)
    assert len(wecom.received(r"/message/send")) == 2
