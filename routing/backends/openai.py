"""The `openai` kind: any server speaking OpenAI's chat completions API (OpenAI, DeepSeek,
Qwen, Moonshot, Ollama, vLLM…).

Hand-written on httpx rather than the `openai` SDK or tenacity: the SDK is a heavy
dependency for one POST, and both would still need our own rules for which failures are
transient, the Retry-After cap and the error messages; the loop below is that and no more.
"""

from __future__ import annotations

import logging
import math
import random
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from routing.backends.base import (
    Completion,
    Message,
    ModelClient,
    ModelRequestRejected,
    ModelUnavailable,
    Sleep,
)
from routing.models import ModelBackend

logger = logging.getLogger(__name__)

#: pause before each retry (so len(RETRY_DELAYS) + 1 attempts in all); read at call time
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)
#: each pause is stretched by up to this fraction, so workers that failed together do not
#: all come back in the same instant
JITTER = 0.1
#: no single pause is longer, whatever the schedule or a Retry-After header asks for: a
#: chat user is waiting, and the fallback backend is the better bet after that long
MAX_DELAY = 10.0
#: a model server that does not accept the connection within this is down, not slow
CONNECT_TIMEOUT_CAP = 5.0
RETRY_AFTER_STATUSES = frozenset({429, 503})


class _TransientFailure(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


def chat_completions_url(base_url: str) -> str:
    """`https://api.deepseek.com/v1` → `https://api.deepseek.com/v1/chat/completions`."""
    base = base_url.strip().rstrip("/")
    # Admins paste the full endpoint from a provider's docs as often as its base URL.
    if base.endswith("/chat/completions"):
        return base
    return f"{base}/chat/completions"


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds within [0, MAX_DELAY];
    None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_DELAY)


def backoff_delay(base: float) -> float:
    return min(base * (1 + random.uniform(0, JITTER)), MAX_DELAY)


_ADVICE = {
    401: "check the backend's API key",
    403: "the API key is not allowed to do this; check the key and the account's access to the model",
    404: "check the backend's base URL (usually ends in /v1) and model name",
    408: "the model server timed out reading the request",
    413: "the conversation is too long for this model; lower the bot's context turns",
    429: "rate limited or out of quota; check the account's limits and balance",
}


class OpenAIClient(ModelClient):
    def __init__(self, backend: ModelBackend, http: httpx.Client, sleep: Sleep = time.sleep) -> None:
        super().__init__(backend, http, sleep)
        self.url = chat_completions_url(backend.base_url)
        self.api_key = str(backend.api_key or "")

    def complete(self, messages: list[Message]) -> Completion:
        backend = self.backend
        if not (backend.base_url and backend.model):
            raise ModelRequestRejected(
                f"{backend.name}: an OpenAI-compatible backend needs a base URL and a model name; "
                "set both on the backend",
                attempts=0,
            )
        payload: dict[str, Any] = {"model": backend.model, "messages": messages, "stream": False}
        # 0 is treated as unset too: a limit of 0 tokens would make every answer empty.
        if backend.max_tokens:
            payload["max_tokens"] = backend.max_tokens
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        timeout = httpx.Timeout(backend.timeout, connect=min(backend.timeout, CONNECT_TIMEOUT_CAP))

        delays = RETRY_DELAYS
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._post(payload, headers, timeout, attempt)
                break
            except _TransientFailure as failure:
                if attempt > len(delays):
                    raise ModelUnavailable(
                        f"{failure.detail} (gave up after {attempt} attempts)", attempts=attempt
                    ) from failure.__cause__
                delay = failure.retry_after if failure.retry_after is not None else backoff_delay(delays[attempt - 1])
                logger.warning(
                    "%s: attempt %d of %d failed: %s; retrying in %.2f s",
                    backend.name,
                    attempt,
                    len(delays) + 1,
                    failure.detail,
                    delay,
                )
                self.sleep(delay)
        text, usage = self._read(response, attempt)
        return Completion(
            text=text,
            backend_name=backend.name,
            attempts=attempt,
            latency_ms=(time.monotonic() - started) * 1000,
            usage=usage,
        )

    # -- one attempt -------------------------------------------------------------------

    def _post(
        self, payload: dict[str, Any], headers: dict[str, str], timeout: httpx.Timeout, attempt: int
    ) -> httpx.Response:
        name, url = self.backend.name, self.url
        try:
            response = self.http.post(url, json=payload, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise _TransientFailure(
                f"{name}: no answer from {url} within {self.backend.timeout:g} s ({type(exc).__name__}); "
                "the model may be overloaded, or raise the backend's timeout if it is just slow"
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ModelRequestRejected(
                f"{name}: {url} is not a usable URL ({exc}); check the backend's base URL", attempts=attempt
            ) from exc
        except httpx.ConnectError as exc:
            raise _TransientFailure(
                f"{name}: could not connect to {url} ({self._redact(str(exc))}); "
                "check the base URL and that the model server is running"
            ) from exc
        except httpx.TransportError as exc:
            raise _TransientFailure(
                f"{name}: connection to {url} failed ({type(exc).__name__}: {self._redact(str(exc))})"
            ) from exc

        status = response.status_code
        if response.is_success:
            return response
        detail = f"{name}: HTTP {status} from {url}"
        if status in _ADVICE:
            detail += f" — {_ADVICE[status]}"
        elif status >= 500:
            detail += " — the model server failed"
        elif 300 <= status < 400:
            detail += " — redirects are not followed; check the backend's base URL"
        else:
            detail += " — the model server refused the request"
        said = self._upstream_error(response)
        if said:
            detail += f" (it said: {said})"
        if status in (408, 429) or status >= 500:
            retry_after = None
            if status in RETRY_AFTER_STATUSES:
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise _TransientFailure(detail, retry_after)
        raise ModelRequestRejected(detail, attempts=attempt)

    def _read(self, response: httpx.Response, attempt: int) -> tuple[str, dict[str, Any]]:
        def malformed(what: str) -> ModelRequestRejected:
            return ModelRequestRejected(
                f"{self.backend.name}: malformed response from {self.url}: {what}; "
                "is the base URL an OpenAI-compatible endpoint?",
                attempts=attempt,
            )

        try:
            body = response.json()
        except ValueError:
            raise malformed(f"not JSON ({self._redact(response.text)[:120]!r})") from None
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise malformed("no choices[0].message.content") from None
        if not isinstance(content, str) or not content.strip():
            if isinstance(choice, dict) and choice.get("finish_reason") == "length":
                raise ModelRequestRejected(
                    f"{self.backend.name}: malformed response: the answer was cut off at max_tokens before any "
                    "text; raise the backend's max tokens",
                    attempts=attempt,
                )
            raise malformed("the answer is empty")
        usage = body.get("usage")
        return content, usage if isinstance(usage, dict) else {}

    # -- helpers -----------------------------------------------------------------------

    def _upstream_error(self, response: httpx.Response) -> str:
        """The server's own explanation (OpenAI puts it in error.message), shortened and
        with our key removed: some servers echo the key they refused."""
        try:
            body = response.json()
        except ValueError:
            said = response.text
        else:
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                said = str(error.get("message") or "")
            elif error:
                said = str(error)
            elif isinstance(body, dict):
                said = str(body.get("message") or body.get("detail") or "")
            else:
                said = ""
        said = self._redact(" ".join(said.split()))
        return said[:300] + ("…" if len(said) > 300 else "")

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text
