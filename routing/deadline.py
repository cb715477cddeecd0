"""A deadline for the model calls of one synchronous dialog turn (the chat API).

The backends' own timeouts are per attempt and they retry, so a turn can take several
times a backend's timeout. A caller waiting on an HTTP request needs one bound for the
whole turn: within `with deadline(seconds):`, every request made through
`deadline_http_client()` has its timeouts cut to the time left, and once the time is
up a request raises DeadlineExceeded, which no backend catches, so the turn ends there
instead of moving on to the next retry or the fallback backend.

Nothing is left running when the deadline passes (unlike a watchdog thread): the turn
runs in the caller's thread and stops at its next network wait. A pause between retries
cannot be cut short from here, so a model that asks for one (Retry-After) longer than
the time left ends the turn at once; the backoff pauses are at most about 2 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpx

from routing.backends.openai import RETRY_AFTER_STATUSES, retry_after_seconds

_ends_at: ContextVar[float | None] = ContextVar("model_call_deadline", default=None)
_client: httpx.Client | None = None


class DeadlineExceeded(Exception):
    """The turn ran out of time while waiting for a model."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    token = _ends_at.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _ends_at.reset(token)


class DeadlineClient(httpx.Client):
    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        ends_at = _ends_at.get()
        if ends_at is None:
            return super().send(request, **kwargs)
        left = ends_at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("no time left for another model request")
        timeouts = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            phase: left if timeouts.get(phase) is None else min(timeouts[phase], left)
            for phase in ("connect", "read", "write", "pool")
        }
        try:
            response = super().send(request, **kwargs)
        except httpx.TimeoutException as exc:
            # Our cut, not the backend's own timeout: stop instead of retrying.
            if time.monotonic() >= ends_at - 0.01:
                raise DeadlineExceeded("the model did not answer in time") from exc
            raise
        if response.status_code in RETRY_AFTER_STATUSES:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None and wait >= ends_at - time.monotonic():
                raise DeadlineExceeded(f"the model asked to be called again in {wait:g} s, after the deadline")
        return response


def deadline_http_client() -> DeadlineClient:
    """One pooled client per process, shared by every request thread (the deadline is
    per thread, in a context variable)."""
    global _client
    if _client is None:
        _client = DeadlineClient(timeout=httpx.Timeout(15.0, connect=5.0), follow_redirects=False)
    return _client
