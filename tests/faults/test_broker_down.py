"""The broker is unreachable when a callback arrives. Decision: the callback still
answers 200. The outbox row is committed before the answer, so the message is safe; the
sweeper queues it once the broker is back, and the task's claim makes it one reply."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from channels_app.models import InboundMessage, MessageStatus
from tests.e2e.conftest import CeleryWorker, database_url_for_subprocess
from tests.faults.conftest import Gunicorn, post, signed_callback
from tests.processes import REPO_ROOT, RedisServer, process_env, wait_until

pytestmark = pytest.mark.slow

SWEEP = "import django; django.setup(); from channels_app.tasks import sweep_outbox; print(sweep_outbox())"


def sweep(broker_url: str) -> str:
    """One run of the outbox sweeper, as beat would start it, publishing to broker_url."""
    result = subprocess.run(
        [sys.executable, "-c", SWEEP],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=process_env(
            DJANGO_SETTINGS_MODULE="tests.settings",
            DATABASE_URL=database_url_for_subprocess(),
            CELERY_BROKER_URL=broker_url,
            OUTBOX_RECEIVED_AFTER="1",
        ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_callback_while_the_broker_is_down_is_answered_and_replied_to_once_it_is_back(bot, wecom):
    broker = RedisServer().start()
    try:
        with Gunicorn(CELERY_BROKER_URL=broker.url) as web:
            broker.stop()
            path, body = signed_callback(bot, "are you there", 7001)
            started = time.monotonic()
            response = post(web.url, path, body)
            assert response.status_code == 200 and response.content == b""
            assert time.monotonic() - started < 5, "WeCom stops waiting at 5 s"
            assert InboundMessage.objects.get(platform_message_id="7001").status == MessageStatus.RECEIVED

        broker.start()  # the same port: the broker comes back empty
        with CeleryWorker(extra_env={"CELERY_BROKER_URL": broker.url}):
            time.sleep(1.5)
            assert wecom.received(r"/message/send") == [], "nothing was queued while the broker was down"
            assert "'received': 1" in sweep(broker.url)
            [sent] = wecom.wait_for(r"/message/send", 1, timeout=30)
            assert sent.json()["text"]["content"] == "[m1] are you there (history=0)"
            wait_until(
                lambda: InboundMessage.objects.get(platform_message_id="7001").status == MessageStatus.REPLIED,
                timeout=20,
                what="row replied",
            )
            assert "'received': 0" in sweep(broker.url)
            time.sleep(1.0)  # room for a wrong second reply
        assert len(wecom.received(r"/message/send")) == 1
    finally:
        broker.stop()
