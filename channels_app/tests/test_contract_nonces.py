"""The shared contract's nonce check, for every adapter that claims nonces: the very same
request sent again (WeCom and WeChat do when our answer was late), after the first was
recorded or while it still waits for the database, gets the platform's normal answer,
is counted as a re-delivery and is queued once; another message under a used nonce is
refused; and a nonce is kept until its own timestamp leaves CALLBACK_TIMESTAMP_WINDOW,
up to twice the window for a request signed ahead of our clock.

Outside a test transaction, against the real Redis: the claim rides with the hand-off
as in production, or (inside a transaction, where the hand-off waits for the commit) it
is made alone."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.test import Client
from django_redis import get_redis_connection
from prometheus_client import REGISTRY

from channels_app import replay
from channels_app.models import InboundMessage
from channels_app.tests.contract import ContractKit, Request
from channels_app.tests.test_contract import MSG_ID, TEXT, kit_for, params
from config.celery import app
from tests.database_locks import outbox_inserts_held
from tests.processes import wait_until

OTHER_ID, OTHER_TEXT = "7385000000000000099", "另一条 another message"


@pytest.fixture(params=list(params()))
def kit(request) -> ContractKit:
    kit = kit_for(request.param)
    if not kit.claims_nonces:
        pytest.skip(f"{kit.platform} requests carry no nonce")
    return kit


@pytest.fixture
def bot(kit, transactional_db):
    with kit.running() as fake:
        yield kit.make_bot(fake.url)


@pytest.fixture
def queued():
    """How many tasks wait in this run's queue (emptied before and after)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(app.conf.task_default_queue)
    yield lambda: client.llen(app.conf.task_default_queue)
    client.delete(app.conf.task_default_queue)


@pytest.fixture(params=["with the hand-off", "alone"])
def send(request, client):
    in_transaction = request.param == "alone"

    def send(callback: Request):
        if not in_transaction:
            return callback.send(client)
        with transaction.atomic():
            return callback.send(client)

    return send


def count(platform: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("switchboard_callbacks_total", {"platform": platform, "outcome": outcome}) or 0


def nonce_keys(bot) -> list[bytes]:
    return list(get_redis_connection("default").scan_iter(match=replay.key(f"{bot.uuid}:*")))


def test_the_very_same_request_again_is_answered_alike_and_counted_as_a_redelivery(kit, bot, send, queued, caplog):
    caplog.set_level(logging.INFO, logger="switchboard.callbacks")
    callback = kit.text_message(bot, MSG_ID, TEXT)
    first = send(callback)
    assert 200 <= first.status_code < 300, first.content[:300]
    before = count(kit.platform, "redelivered")

    again = send(callback)

    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert count(kit.platform, "redelivered") == before + 1
    assert InboundMessage.objects.filter(bot=bot).count() == 1 and queued() == 1  # one answer will go out
    callbacks = [r for r in caplog.records if r.name == "switchboard.callbacks"]
    assert [r.levelno for r in callbacks] == [logging.INFO]
    assert "re-delivery" in callbacks[0].getMessage()


def test_a_copy_sent_while_the_first_waits_for_the_database_is_answered_alike(kit, bot, queued):
    """Both requests verified and waiting at their INSERT: one records the message, the
    other meets its row, and whichever claims the nonce second finds the same message."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...): the database is slowed with a table lock")
    callback = kit.text_message(bot, MSG_ID, TEXT)

    def send():
        try:
            return callback.send(Client())
        finally:
            connection.close()  # this thread's own

    with ThreadPoolExecutor(2) as pool:
        with outbox_inserts_held() as waiting:
            first = pool.submit(send)
            wait_until(lambda: waiting() == 1, timeout=10, what="the first request at its INSERT", interval=0.02)
            again = pool.submit(send)
            wait_until(lambda: waiting() == 2, timeout=10, what="the copy at its INSERT", interval=0.02)
        first, again = first.result(timeout=10), again.result(timeout=10)

    assert 200 <= first.status_code < 300, first.content[:300]
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert InboundMessage.objects.filter(bot=bot).count() == 1 and queued() == 1


def test_a_nonce_reused_for_another_message_is_refused(kit, bot, send, queued):
    callback = kit.text_message(bot, MSG_ID, TEXT)
    assert 200 <= send(callback).status_code < 300
    other = kit.reuse_nonce(bot, callback, OTHER_ID, OTHER_TEXT)
    if other is None:
        pytest.skip(f"{kit.platform}'s nonce is its signature: no other message can carry it")
    before = count(kit.platform, "replayed")

    refused = send(other)

    assert refused.status_code == 409, refused.content[:300]
    assert count(kit.platform, "replayed") == before + 1
    assert list(InboundMessage.objects.filter(bot=bot).values_list("text", flat=True)) == [TEXT]


def test_a_nonce_is_kept_until_its_own_timestamp_leaves_the_window(kit, bot, client, settings, queued):
    if not kit.uses_timestamp_window:
        pytest.skip(f"{kit.platform} has a window of its own (tested with the adapter)")
    window = settings.CALLBACK_TIMESTAMP_WINDOW = 3
    # Signed ahead of our clock, as by a platform whose clock runs fast: the timestamp
    # passes until signed_at + window, more than `window` seconds from now.
    signed_at = int(time.time()) + window - 1
    callback = kit.text_message(bot, MSG_ID, TEXT, signed_at=signed_at)
    assert 200 <= callback.send(client).status_code < 300
    first_use = time.time()
    [key] = nonce_keys(bot)
    ttl = get_redis_connection("default").ttl(key)
    assert ttl > window and ttl >= int(signed_at + window - time.time())

    # Past a claim kept `window` seconds from its first use, while the timestamp still passes.
    time.sleep(max(first_use + window + 0.3 - time.time(), 0))
    assert time.time() < signed_at + window
    other = kit.reuse_nonce(bot, callback, OTHER_ID, OTHER_TEXT)
    if other is not None:
        assert other.send(client).status_code == 409
    before = count(kit.platform, "redelivered")
    assert 200 <= callback.send(client).status_code < 300
    assert count(kit.platform, "redelivered") == before + 1  # still known, not a first delivery
    assert InboundMessage.objects.filter(bot=bot).count() == 1

    # Once the timestamp is out of the window the request is stale, and the claim goes.
    time.sleep(max(signed_at + window + 0.2 - time.time(), 0))
    assert callback.send(client).status_code == 401
    deadline = time.monotonic() + 3
    while nonce_keys(bot) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nonce_keys(bot) == []
