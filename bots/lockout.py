"""Console lockout: an account is locked, from one client address, after repeated failed
passwords or codes.

Counted per (user name, IP) in the cache (Redis), so every gunicorn worker sees the same
count and a lock ends by itself when its key expires. Password failures, sign-in code
failures and step-up code failures all count towards one limit: an attacker who has the
password (or a stolen session) must not get a fresh allowance at the next step.

Why not django-axes: it hooks authenticate(), which covers the password step only; the
code steps are ours and would need a second counter with its own message and audit. One
small counter serves all three steps the same way.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

from audit.events import record_auth_event
from audit.models import AuthEventKind
from config.clientip import client_ip

logger = logging.getLogger("switchboard.security")


@dataclass(frozen=True)
class Lock:
    seconds_left: int

    @property
    def message(self) -> str:
        minutes = max(1, math.ceil(self.seconds_left / 60))
        return (
            "Too many failed attempts for this account from your address. Signing in is locked "
            f"for {minutes} more minute{'s' if minutes != 1 else ''}; wait, or ask another administrator "
            "to check the sign-in events if this was not you."
        )


def _key(kind: str, username: str, request: HttpRequest) -> str:
    address = client_ip(request)
    digest = hashlib.sha256(f"{username.casefold()}|{address}".encode()).hexdigest()[:32]
    return f"console-lockout:{kind}:{digest}"


def lock_of(username: str, request: HttpRequest) -> Lock | None:
    """The lock on this account from this address, if there is one now."""
    try:
        until = cache.get(_key("locked", username, request))
    except (ConnectionInterrupted, RedisError) as exc:
        # The console must stay reachable to repair things while Redis is down; django-otp
        # still pauses a device after each wrong code.
        logger.error("lockout check skipped, the cache is unavailable: %s", exc)
        return None
    if until is None or until <= time.time():
        return None
    return Lock(math.ceil(until - time.time()))


def record_failure(username: str, request: HttpRequest, step: str, user=None) -> Lock | None:
    """Count one failed password or code; lock (and audit it) when the limit is reached.
    Returns the new lock, if this failure caused one."""
    failures_key = _key("failures", username, request)
    try:
        cache.add(failures_key, 0, timeout=settings.LOGIN_FAILURE_WINDOW)
        failures = cache.incr(failures_key)
        if failures < settings.LOGIN_FAILURE_LIMIT:
            return None
        seconds = settings.LOGIN_LOCKOUT_SECONDS
        cache.set(_key("locked", username, request), time.time() + seconds, timeout=seconds)
        cache.delete(failures_key)
    except ValueError:
        # The failure count expired between add and incr: this failure starts a new window.
        return record_failure(username, request, step, user)
    except (ConnectionInterrupted, RedisError) as exc:
        logger.error("failed %s of %s not counted, the cache is unavailable: %s", step, username, exc)
        return None
    record_auth_event(
        AuthEventKind.LOCKED_OUT,
        request,
        user=user,
        username=username,
        detail=(
            f"{failures} failed attempts within {settings.LOGIN_FAILURE_WINDOW // 60} min (last: {step}); "
            f"locked for {seconds // 60} min"
        ),
    )
    return Lock(seconds)


def clear_failures(username: str, request: HttpRequest) -> None:
    """A complete sign-in forgets earlier failures of this account from this address."""
    try:
        cache.delete(_key("failures", username, request))
    except (ConnectionInterrupted, RedisError) as exc:
        logger.error("could not reset the failure count of %s: %s", username, exc)
