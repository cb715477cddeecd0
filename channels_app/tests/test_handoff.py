"""The callback's publish (channels_app/handoff.py) against Celery's own: the same
message on the wire, the same queue, a fresh connection after the broker was lost, and
the replay check that rides along with it."""

from __future__ import annotations

import socket
import time
import uuid

import pytest
import redis
from django.conf import settings

from channels_app import handoff, replay
from channels_app.tasks import handle_message
from config.celery import app
from tests.broker import decode_task_message
from tests.processes import RedisServer

# Differ on every publish, whoever sends it.
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag"}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in PER_MESSAGE}
    return value


@pytest.fixture
def queue():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    name = app.conf.task_default_queue
    client.delete(name)
    yield client, name
    client.delete(name)


def test_the_message_is_the_one_delay_would_send(queue):
    client, name = queue
    handle_message.delay(41, 2.5)
    assert handoff.publish(handle_message, (42, 3.5)) is None
    ours, celerys = (decode_task_message(raw) for raw in client.lrange(name, 0, -1))  # newest first
    assert ours["properties"]["correlation_id"] == ours["headers"]["id"] != celerys["headers"]["id"]
    assert ours["body"][0] == [42, 3.5] and celerys["body"][0] == [41, 2.5]
    assert ours["headers"]["argsrepr"] == "(42, 3.5)"
    ours["body"][0] = celerys["body"][0]
    ours["headers"]["argsrepr"] = celerys["headers"]["argsrepr"]
    assert _strip(ours) == _strip(celerys)
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": name}


@pytest.fixture
def private_broker(monkeypatch):
    """A redis-server of the test's own as the broker, to stop and start at will."""
    server = RedisServer().start()
    monkeypatch.setitem(app.conf, "broker_url", server.url)
    handoff._forget_connection()
    try:
        yield server
    finally:
        server.stop()
        handoff._forget_connection()


def queued_args(client) -> list:
    """The arguments of the tasks in our queue, newest first."""
    return [decode_task_message(raw)["body"][0] for raw in client.lrange(app.conf.task_default_queue, 0, -1)]


def test_after_the_broker_is_lost_the_next_publish_connects_again(private_broker):
    handoff.publish(handle_message, (1, None))
    assert len(queued_args(private_broker.client())) == 1
    private_broker.stop()
    with pytest.raises(Exception):  # noqa: B017 (whatever kombu raises: the caller only logs it)
        handoff.publish(handle_message, (2, None))
    private_broker.start()  # the same port, empty
    handoff.publish(handle_message, (3, None))
    assert queued_args(private_broker.client()) == [[3, None]]


def claim(message: bytes, name: str | None = None) -> replay.NonceClaim:
    return replay.NonceClaim.of(name or f"handoff-test:{uuid.uuid4()}", message, time.time() + 59)


def test_a_claim_rides_along_and_its_reply_says_what_the_key_held(queue):
    client, _ = queue
    first = claim(b"message")
    again, other = claim(b"message", first.name), claim(b"another message", first.name)
    try:
        assert handoff.can_claim_nonces()  # the default: broker and cache on the same Redis
        assert first.outcome(handoff.publish(handle_message, (1, None), along=first.command())) is replay.Claim.NEW
        reply = handoff.publish(handle_message, (2, None), along=again.command())
        assert again.outcome(reply) is replay.Claim.SAME_MESSAGE
        reply = handoff.publish(handle_message, (3, None), along=other.command())
        assert other.outcome(reply) is replay.Claim.OTHER_MESSAGE
        assert 0 < client.ttl(first.key) <= 60
        assert client.get(first.key).decode() == first.fingerprint  # the first message's, kept
        # Queued either way: the caller undoes the row of a replay, the task finds nothing.
        assert queued_args(client) == [[3, None], [2, None], [1, None]]
    finally:
        client.delete(first.key)


def test_no_claim_rides_along_when_the_broker_is_another_redis(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/9"
    assert not handoff.can_claim_nonces()


def test_a_broker_that_never_answers_the_connection_does_not_hold_the_callback(monkeypatch):
    """A listener whose accept queue is full drops new SYNs, as a host behind a silent
    firewall does: without a connect timeout the publish would wait for the kernel's
    (minutes); the platform stops waiting at 5 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue; later connects get no answer
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        monkeypatch.setitem(app.conf, "broker_url", f"redis://127.0.0.1:{port}/0")
        handoff._forget_connection()
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 (whatever kombu raises: the caller only logs it)
            handoff.publish(handle_message, (1, None))
        assert time.monotonic() - started < 5
    finally:
        handoff._forget_connection()
        for sock in [*fillers, listener]:
            sock.close()


def test_a_refused_publish_raises_and_the_next_one_is_unaffected(queue):
    """The queue's key holding a string: Redis refuses the LPUSH. The caller must hear it
    (it logs the failure and leaves the row to the sweeper), and the next publish works."""
    client, name = queue
    first, second = claim(b"first"), claim(b"second")
    try:
        client.set(name, "not a list")
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            handoff.publish(handle_message, (1, None), along=first.command())
        client.delete(name)
        assert second.outcome(handoff.publish(handle_message, (2, None), along=second.command())) is replay.Claim.NEW
        reply = handoff.publish(handle_message, (3, None), along=second.command())
        assert second.outcome(reply) is replay.Claim.SAME_MESSAGE
        assert queued_args(client) == [[3, None], [2, None]]
    finally:
        client.delete(first.key, second.key)


def test_a_batch_that_fails_midway_leaves_no_reply_for_the_next_batch(queue):
    """Redis answers every command of a batch even after one fails; the replies left
    unread after the failure must not be taken as the next batch's."""
    client, _ = queue
    key, counter = (f"handoff-test:{uuid.uuid4()}" for _ in range(2))
    channel = handoff._open_channel()
    try:
        client.set(key, "a string")
        batch = channel.batch()
        batch.add("lpush", key, "x")  # WRONGTYPE
        batch.add("incr", counter)  # answered 1, and never read
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            batch.execute()
        batch = channel.batch()
        batch.add("get", key)
        assert batch.execute() == [b"a string"]
        assert client.get(counter) == b"1"
    finally:
        client.delete(key, counter)
        handoff._forget_connection()


def test_a_broker_restarted_while_idle_takes_the_next_publish(private_broker):
    """The kept connection was closed by the server; the next publish notices before it
    sends (a callback after a Redis restart is queued at once, not left to the sweeper)."""
    handoff.publish(handle_message, (1, None))
    private_broker.stop()
    private_broker.start()  # the same port, empty
    handoff.publish(handle_message, (2, None))
    assert queued_args(private_broker.client()) == [[2, None]]
