"""Liveness marks in Redis for the processes that serve no HTTP.

Every Celery worker refreshes its own key every WORKER_INTERVAL seconds (it expires after
WORKER_TTL, so a worker killed with -9 disappears too), and Celery beat stamps a key each
time it queues a task. /metrics reads both; `manage.py doctor` reads the beat stamp
(for workers it asks them directly with a ping).

The handlers are connected when this module is imported: CELERY_IMPORTS names it, so
both the worker and beat import it at start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from celery.signals import beat_init, before_task_publish, worker_ready, worker_shutdown
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

logger = logging.getLogger("switchboard.heartbeat")

WORKER_INTERVAL = 10
WORKER_TTL = 3 * WORKER_INTERVAL

_stop = threading.Event()
_in_beat = False


def _key(*parts: str) -> str:
    return ":".join((settings.CACHES["default"]["KEY_PREFIX"], "heartbeat", *parts))


def beat_last_seen() -> float | None:
    """Unix time beat last queued a task (or started), None if it never did."""
    value = get_redis_connection("default").get(_key("beat"))
    return float(value) if value is not None else None


def live_workers() -> list[dict]:
    """The workers whose heartbeat has not expired: hostname, queues, pid, time."""
    redis = get_redis_connection("default")
    keys = list(redis.scan_iter(match=_key("worker", "*"), count=500))
    return [json.loads(value) for value in redis.mget(keys) if value is not None] if keys else []


def stamp_beat() -> None:
    get_redis_connection("default").set(_key("beat"), f"{time.time():.3f}", ex=86400)


def _stamp_worker(key: str, value: str) -> None:
    get_redis_connection("default").set(key, value, ex=WORKER_TTL)


@beat_init.connect
def _beat_started(**_: object) -> None:
    global _in_beat
    _in_beat = True
    try:
        stamp_beat()
    except RedisError as exc:
        logger.warning("could not record beat's heartbeat: %s", exc)


@before_task_publish.connect
def _beat_publishes(**_: object) -> None:
    if not _in_beat:
        return
    try:
        stamp_beat()
    except RedisError as exc:
        logger.warning("could not record beat's heartbeat: %s", exc)


@worker_ready.connect
def _worker_started(sender, **_: object) -> None:
    hostname = sender.hostname
    queues = sorted(sender.app.amqp.queues.consume_from)
    key = _key("worker", hostname)

    def beat() -> None:
        failing = False
        while not _stop.is_set():
            value = json.dumps({"hostname": hostname, "queues": queues, "pid": os.getpid(), "time": time.time()})
            try:
                _stamp_worker(key, value)
                failing = False
            except RedisError as exc:
                if not failing:  # once per outage, not every ten seconds
                    logger.warning("could not record this worker's heartbeat: %s", exc)
                failing = True
            _stop.wait(WORKER_INTERVAL)

    threading.Thread(target=beat, name="switchboard-heartbeat", daemon=True).start()


@worker_shutdown.connect
def _worker_stopping(sender, **_: object) -> None:
    _stop.set()
    try:
        get_redis_connection("default").delete(_key("worker", sender.hostname))
    except RedisError as exc:
        logger.warning("could not remove this worker's heartbeat: %s", exc)
