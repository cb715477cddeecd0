"""What every model client shares: the result type, the errors, and the client contract.

Errors say whether they are worth retrying (`transient`) so the caller can decide between
a fallback backend and giving up, and their messages name the backend and what to fix,
never a credential.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from routing.models import ModelBackend

Message = dict[str, str]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Completion:
    """One answer from a model backend."""

    text: str
    backend_name: str
    #: HTTP attempts it took, including the one that succeeded
    attempts: int
    #: wall time of the whole call, retries and backoff included: what the user waited
    latency_ms: float
    #: the backend's token counts as it reported them ({} when it reports none)
    usage: dict[str, Any]


class ModelError(Exception):
    """A backend could not answer. `transient` tells whether trying again later (or
    another backend now) may help; `attempts` is how many HTTP requests were made.
    The subclasses fix `transient`; a plain ModelError takes it (the dialog engine uses
    one to report a backend and its fallback failing together)."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient
        self.attempts = attempts


class ModelUnavailable(ModelError):
    """Timeouts, refused connections, 408, 429 or 5xx, still failing after the retries."""

    transient = True


class ModelRequestRejected(ModelError):
    """The backend refused the request (4xx), answered something we cannot read, or is
    misconfigured or disabled. Retrying the same request cannot help."""

    transient = False


class ModelClient(ABC):
    """Talks to one kind of backend. An instance serves one `complete()` call."""

    def __init__(self, backend: ModelBackend, http: httpx.Client, sleep: Sleep = time.sleep) -> None:
        self.backend = backend
        self.http = http
        self.sleep = sleep

    @abstractmethod
    def complete(self, messages: list[Message]) -> Completion:
        """Answer the conversation; raise a ModelError subclass on failure."""
