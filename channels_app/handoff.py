"""Queueing a recorded message for the dialog task, as cheaply as Celery's wire format allows.

`handle_message.delay()` cost about 0.24 ms of CPU per callback, most of it in what
`send_task` wraps around the message: routing, publish signals, retry and declare
wrappers, result-backend bookkeeping. The hand-off needs none of it: the row is already
committed, and if the publish fails the outbox sweeper queues it (docs/performance.md).
So the message is built by Celery itself (`app.amqp.as_task_v2`, serialized with the
app's task serializer) and handed to the kombu channel the way kombu's Producer does:
`prepare_message`, then `basic_publish` to the task's queue. The result is the message
`delay()` sends (channels_app/tests/test_handoff.py compares the two); what is skipped is
the publish signals, which Switchboard does not use.

One broker connection per process, opened on first use; dropped after any error so the
next callback connects afresh. On the Redis broker the publish can carry the callback's
replay-check claim (a small script: SET NX, or the fingerprint already there) in the same
round trip.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from kombu import uuid
from kombu.common import maybe_declare
from kombu.serialization import dumps

from config import broker
from config.celery import app

_lock = threading.Lock()
_connection = None
_channel = None
# Read from the app's configuration when the channel opens: each lookup there walks a
# chain of mappings, twice per publish.
_queue = ""
_serializer = ""


def _open_channel():
    global _connection, _channel, _queue, _serializer
    if _channel is None:
        _queue, _serializer = app.conf.task_default_queue, app.conf.task_serializer
        connection = app.connection_for_write()
        try:
            # One attempt (bounded by the transport's connect timeout): kombu's default
            # retries with 2 s pauses, and the platform is waiting for this callback's
            # answer. The row is committed; the sweeper queues it if this fails.
            connection.ensure_connection(max_retries=0)
            channel = connection.channel()
            # Declared once per connection, as Celery does before its first publish: a
            # broker such as RabbitMQ drops a message for a queue nobody declared yet.
            maybe_declare(app.amqp.queues[_queue], channel)
        except Exception:
            connection.collect()
            raise
        _connection, _channel = connection, channel
    return _channel


def _forget_connection() -> None:
    global _connection, _channel
    connection, _connection, _channel = _connection, None, None
    if connection is not None:
        connection.collect()  # releases it without talking to a broker that may be gone


def can_claim_nonces() -> bool:
    """Whether publish() can take a replay-check claim along: the broker is the Redis
    transport of config/broker.py, on the same Redis database as the nonce cache."""
    return (
        settings.CELERY_BROKER_TRANSPORT == "config.broker:Transport"
        and settings.CELERY_BROKER_URL == settings.CACHES["default"]["LOCATION"]
    )


def publish(task, args: tuple, along: tuple | None = None) -> Any:
    """Queue task(*args) on the default queue. along: one Redis command (the callback's
    replay-check claim, channels_app/replay.py) to send in the same round trip, before
    the task (only where can_claim_nonces()); its reply, None without one. The task is
    queued either way. Raises what the broker raises (the caller leaves the message to
    the sweeper)."""
    message = app.amqp.as_task_v2(
        uuid(),
        task.name,
        args,
        {},
        argsrepr=repr(args),
        kwargsrepr="{}",
        ignore_result=task.ignore_result,
        reply_to=app.thread_oid,
    )
    properties = {**message.properties, "delivery_mode": 2}  # persistent, as Celery's default
    with _lock:  # a kombu channel is not for two threads at once (gthread workers)
        try:
            channel = _open_channel()
            content_type, content_encoding, body = dumps(message.body, serializer=_serializer)
            prepared = channel.prepare_message(body, 0, content_type, content_encoding, message.headers, properties)
            queue = _queue
            if not isinstance(channel, broker.Channel):  # another transport: kombu's own publish
                channel.basic_publish(prepared, exchange="", routing_key=queue)
                return None
            batch = channel.batch()
            if along is not None:
                batch.add(*along)
            channel.basic_publish(prepared, exchange="", routing_key=queue, _publish_batch=batch)
            replies = batch.execute()
            return replies[0] if along is not None else None
        except Exception:
            _forget_connection()
            raise
