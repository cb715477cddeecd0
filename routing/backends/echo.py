"""The built-in `echo` kind: answers without a model, so a bot can be tried end to end
(callback → task → reply) before any real backend is configured."""

from __future__ import annotations

import time

from routing.backends.base import Completion, Message, ModelClient


class EchoClient(ModelClient):
    def complete(self, messages: list[Message]) -> Completion:
        started = time.monotonic()
        last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        return Completion(
            text=f"echo: {last_user}",
            backend_name=self.backend.name,
            attempts=1,
            latency_ms=(time.monotonic() - started) * 1000,
            usage={},
        )
