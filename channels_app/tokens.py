"""Platform access tokens, cached in Redis and shared by every worker.

WeChat and others invalidate the previous token soon after a new one is issued, so
tokens must live in one central place, not per process: one fetch, many users.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django_redis import get_redis_connection

# Refresh this long before the platform says the token expires, so a send never
# starts with a token that dies on the way.
EXPIRY_MARGIN_SECONDS = 300
LOCK_SECONDS = 10


def _key(name: str) -> str:
    return f"{settings.CACHES['default']['KEY_PREFIX']}:token:{name}"


def get_token(name: str, fetch: Callable[[], tuple[str, int]]) -> str:
    """The cached token `name`, or a new one from fetch() -> (token, expires_in seconds).

    A short Redis lock makes concurrent workers wait for one fetch instead of each
    asking the platform (and invalidating each other's tokens).
    """
    redis = get_redis_connection("default")
    key = _key(name)
    cached = redis.get(key)
    if cached:
        return cached.decode()
    with redis.lock(f"{key}:lock", timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS):
        cached = redis.get(key)
        if cached:
            return cached.decode()
        token, expires_in = fetch()
        ttl = max(int(expires_in) - EXPIRY_MARGIN_SECONDS, 30)
        redis.set(key, token, ex=ttl)
        return token


def forget_token(name: str) -> None:
    """Drop a token the platform refused (expired or revoked early)."""
    get_redis_connection("default").delete(_key(name))
