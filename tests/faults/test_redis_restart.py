"""Redis (the broker and the cache: nonces, context, access tokens, rate limits) is
restarted while messages are in flight. It keeps nothing on disk, so every queued task
is lost with it. Decision: callbacks keep answering 200 while it is down (the row is
committed first), and the outbox sweeper re-queues whatever was lost, received or stuck
in processing; the task's claim and `parts_sent` make it exactly one reply per message."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest

from channels_app.models import InboundMessage, MessageStatus
from tests.e2e.conftest import CeleryWorker, database_url_for_subprocess
from tests.faults.conftest import Gunicorn, post, signed_callback
from tests.processes import REPO_ROOT, RedisServer, process_env

pytestmark = pytest.mark.slow

MESSAGES = 24
BEFORE_STOP = 12  # sent while Redis is up; the rest while it is down
# The sweeper re-queues "received" rows older than this, and "processing" rows whose task
# started longer ago than STUCK_AFTER (a task lost with Redis, or failed on it). STUCK_AFTER
# must stay well above a task's duration, or a running task's row would be taken twice.
RECEIVED_AFTER, STUCK_AFTER = 1, 6

SWEEP = "import django; django.setup(); from channels_app.tasks import sweep_outbox; print(sweep_outbox.run())"


def sweep(redis_url: str) -> str:
    """One run of the outbox sweeper (channels_app.tasks.sweep_outbox.run()), as beat would start
    it. In its own process: the test process's Celery app keeps the broker it first
    connected to, so only a fresh process publishes to the private Redis."""
    result = subprocess.run(
        [sys.executable, "-c", SWEEP],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=process_env(
            DJANGO_SETTINGS_MODULE="tests.settings",
            DATABASE_URL=database_url_for_subprocess(),
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=redis_url,
            OUTBOX_RECEIVED_AFTER=str(RECEIVED_AFTER),
            OUTBOX_STUCK_AFTER=str(STUCK_AFTER),
        ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def replies(wecom) -> Counter:
    return Counter(record.json()["text"]["content"] for record in wecom.received(r"/message/send"))


def test_messages_in_flight_when_redis_restarts_are_each_answered_once(bot, wecom, model, settings):
    started = time.monotonic()
    redis_server = RedisServer().start()
    # This process too: the bot's save and anything cached go to the private Redis.
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": redis_server.url}}
    settings.CELERY_BROKER_URL = redis_server.url
    settings.OUTBOX_RECEIVED_AFTER, settings.OUTBOX_STUCK_AFTER = RECEIVED_AFTER, STUCK_AFTER
    bot.rate_limit_qps = 1000.0  # per-bot pacing must not make a task outlive STUCK_AFTER
    bot.save(update_fields=["rate_limit_qps"])
    model.delay = 0.1  # a task takes long enough for Redis to go away in the middle of some
    redis_env = {"REDIS_URL": redis_server.url, "CELERY_BROKER_URL": redis_server.url}
    web = Gunicorn(**redis_env)
    worker = CeleryWorker(
        extra_env={**redis_env, "OUTBOX_RECEIVED_AFTER": str(RECEIVED_AFTER), "OUTBOX_STUCK_AFTER": str(STUCK_AFTER)}
    )
    try:
        web.start()
        worker.start()
        texts = {n: f"question {n}" for n in range(MESSAGES)}
        statuses = {}
        for n in range(BEFORE_STOP):
            path, body = signed_callback(bot, texts[n], 9000 + n, user=f"user{n % 4}")
            statuses[n] = post(web.url, path, body).status_code
        time.sleep(0.3)  # some tasks running, some still queued
        redis_server.stop()  # everything queued (and the nonces, tokens, context) is gone
        for n in range(BEFORE_STOP, MESSAGES):
            path, body = signed_callback(bot, texts[n], 9000 + n, user=f"user{n % 4}")
            sent = time.monotonic()
            statuses[n] = post(web.url, path, body).status_code
            assert time.monotonic() - sent < 5, "WeCom stops waiting at 5 s"
        time.sleep(1.0)
        redis_server.start()  # the same port, empty

        accepted = {n for n, status in statuses.items() if status == 200}
        assert accepted == set(texts), f"callbacks refused: {statuses}"
        rows = InboundMessage.objects.filter(bot=bot)
        assert rows.count() == MESSAGES, "every accepted message has its row"
        lost = rows.exclude(status=MessageStatus.REPLIED).count()
        assert lost > 0, "the restart lost nothing: the test did not test anything"

        deadline = time.monotonic() + 40
        while rows.exclude(status=MessageStatus.REPLIED).exists():
            assert time.monotonic() < deadline, (
                f"not all replied: {Counter(rows.values_list('status', flat=True))}\n{worker.output()[-3000:]}"
            )
            assert not rows.filter(status=MessageStatus.FAILED).exists(), list(
                rows.filter(status=MessageStatus.FAILED).values_list("error", flat=True)
            )
            sweep(redis_server.url)
            time.sleep(1.0)
        time.sleep(1.5)  # room for a wrong second reply
        assert "'received': 0, 'processing': 0" in sweep(redis_server.url)
        time.sleep(0.5)

        got = replies(wecom)
        expected = {f"[m1] {texts[n]}" for n in accepted}
        answered = {content.split(" (history=")[0] for content in got}
        assert answered == expected, f"missing: {expected - answered}, unexpected: {answered - expected}"
        assert all(count == 1 for count in got.values()), f"answered more than once: {got}"
        assert len(wecom.received(r"/message/send")) == MESSAGES
        assert set(rows.values_list("status", flat=True)) == {MessageStatus.REPLIED}
        assert time.monotonic() - started < 60
    finally:
        worker.stop()
        web.stop()
        redis_server.stop()
