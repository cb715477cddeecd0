"""Calling model backends: `complete(backend, messages, http)` → Completion or ModelError.

Each backend kind is one ModelClient class in this package and one line in CLIENTS.
"""

from __future__ import annotations

import time

import httpx

from routing.backends.base import (
    Completion,
    Message,
    ModelClient,
    ModelError,
    ModelRequestRejected,
    ModelUnavailable,
    Sleep,
)
from routing.backends.echo import EchoClient
from routing.backends.openai import OpenAIClient
from routing.models import BackendKind, ModelBackend

__all__ = [
    "CLIENTS",
    "Completion",
    "ModelError",
    "ModelRequestRejected",
    "ModelUnavailable",
    "complete",
]

CLIENTS: dict[str, type[ModelClient]] = {
    BackendKind.OPENAI: OpenAIClient,
    BackendKind.ECHO: EchoClient,
}


def complete(
    backend: ModelBackend, messages: list[Message], http: httpx.Client, *, sleep: Sleep = time.sleep
) -> Completion:
    """Ask `backend` to answer OpenAI-style `messages` ([{"role", "content"}, …]).

    Transient failures are retried inside (see routing.backends.openai.RETRY_DELAYS);
    `sleep` is how the pauses between attempts are taken, so tests can skip them.
    Raises ModelUnavailable (transient, retries exhausted) or ModelRequestRejected.
    """
    if not backend.enabled:
        raise ModelRequestRejected(
            f"{backend.name}: this backend is disabled; enable it or route to another backend", attempts=0
        )
    client_class = CLIENTS.get(backend.kind)
    if client_class is None:
        raise ModelRequestRejected(
            f"{backend.name}: unknown backend kind {backend.kind!r}; use one of {', '.join(CLIENTS)}", attempts=0
        )
    return client_class(backend, http, sleep).complete(messages)
