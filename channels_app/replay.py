"""The nonce cache that refuses a replayed callback: Redis SET NX with a TTL."""

from __future__ import annotations

import logging

from django.conf import settings
from django_redis import get_redis_connection
from prometheus_client import Counter
from redis.exceptions import RedisError

logger = logging.getLogger("switchboard.callbacks")

REPLAY_CACHE_UNAVAILABLE = Counter(
    "switchboard_replay_cache_unavailable_total",
    "Callbacks accepted without a nonce check because Redis did not answer",
)


def unavailable(exc: Exception) -> None:
    """Count and log a claim that could not be checked (accepted, as claim() does)."""
    REPLAY_CACHE_UNAVAILABLE.inc()
    logger.warning("nonce cache unavailable, accepting without replay check: %s", exc)


def key(nonce_key: str) -> str:
    """The Redis key of a nonce claim."""
    return f"{settings.CACHES['default']['KEY_PREFIX']}:nonce:{nonce_key}"


def claim(nonce_key: str, ttl_seconds: int) -> bool:
    """True if this nonce is new. Redis being down must not stop the platforms'
    traffic: the signature and timestamp checks still hold and the database's unique
    constraint still drops duplicates, so we accept, log and count it."""
    try:
        return bool(get_redis_connection("default").set(key(nonce_key), 1, nx=True, ex=max(ttl_seconds, 1)))
    except RedisError as exc:
        unavailable(exc)
        return True


def release(nonce_key: str) -> None:
    try:
        get_redis_connection("default").delete(key(nonce_key))
    except RedisError as exc:
        logger.warning("could not release nonce after a failed callback: %s", exc)
