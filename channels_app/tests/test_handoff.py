"""The callback's publish (channels_app/handoff.py) against Celery's own: the same
message on the wire, the same queue, and a fresh connection after the broker was lost."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from django.conf import settings

from channels_app import handoff
from config.celery import app
from routing.tasks import handle_message
from tests.processes import RedisServer

# Differ on every publish, whoever sends it.
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag"}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in PER_MESSAGE}
    return value


def _decoded(raw: bytes) -> dict:
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return envelope


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
    task_id = handoff.publish(handle_message, (42, 3.5))
    ours, celerys = (_decoded(raw) for raw in client.lrange(name, 0, -1))  # newest first
    assert ours["headers"]["id"] == task_id and ours["properties"]["correlation_id"] == task_id
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
        assert _decoded(raw)["body"][0] == [3, None]
    finally:
        server.stop()
        handoff._forget_connection()
