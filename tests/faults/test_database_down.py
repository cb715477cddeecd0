"""PostgreSQL goes away under a running gunicorn (a proxy in front of it is cut): the
callback answers 503 so the platform delivers again, nothing is half-written, and the
platform's retry of the very same request is accepted once the database is back."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from channels_app.models import InboundMessage
from tests.e2e.conftest import database_url_for_subprocess
from tests.faults.conftest import Gunicorn, TcpProxy, post, signed_callback

pytestmark = pytest.mark.slow


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
            assert post(web.url, *cached).status_code == 409  # now it is a replay
        rows = InboundMessage.objects.filter(platform_message_id__in=["8001", "8002"])
        assert sorted(rows.values_list("text", flat=True)) == ["still away", "while the database is away"]
    finally:
        proxy.stop()
