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
from config.celery import app
from routing.tasks import handle_message
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
    assert handoff.publish(handle_message, (42, 3.5)) is True
    ours, celerys = (decode_task_message(raw) for raw in client.lrange(name, 0, -1))  # newest first
    assert ours["properties"]["correlation_id"] == ours["headers"]["id"] != celerys["headers"]["id"]
    assert ours["body"][0] == [42, 3.5] and celerys["body"][0] == [41, 2.5]
    assert ours["headers"]["argsrepr"] == "(42, 3.5)"
    ours["body"][0] = celerys["body"][0]
    ours["headers"]["argsrepr"] = celerys["headers"]["argsrepr"]
    assert _strip(ours) == _strip(celerys)
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": name}


def test_after_the_broker_is_lost_the_next_publish_connects_again(monkeypatch):
    server = RedisServer().start()
    monkeypatch.setitem(app.conf, "broker_url", server.url)
    handoff._forget_connection()
    name = app.conf.task_default_queue
    try:
        handoff.publish(handle_message, (1, None))
        assert server.client().llen(name) == 1
        server.stop()
        with pytest.raises(Exception):  # noqa: B017 (whatever kombu raises: the caller only logs it)
            handoff.publish(handle_message, (2, None))
        server.start()  # the same port, empty
        handoff.publish(handle_message, (3, None))
        [raw] = server.client().lrange(name, 0, -1)
        assert decode_task_message(raw)["body"][0] == [3, None]
    finally:
        server.stop()
        handoff._forget_connection()


def test_a_claim_rides_along_and_says_whether_the_key_was_new(queue):
    client, name = queue
    key = replay.key(f"handoff-test:{uuid.uuid4()}")
    try:
        assert handoff.can_claim_nonces()  # the default: broker and cache on the same Redis
        assert handoff.publish(handle_message, (1, None), claim=(key, 60)) is True
        assert handoff.publish(handle_message, (2, None), claim=(key, 60)) is False
        assert 0 < client.ttl(key) <= 60
        # Queued either way: the caller undoes the row of a replay, the task finds nothing.
        assert [decode_task_message(raw)["body"][0] for raw in client.lrange(name, 0, -1)] == [[2, None], [1, None]]
    finally:
        client.delete(key)


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
