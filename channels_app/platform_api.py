"""One client base for the platforms' send APIs (after Healthchecks' HttpTransport).

Every way a send can fail becomes a TransportError once, here:

- httpx errors are not permanent, and keep the httpx exception as `__cause__`: the outbox
  tells a send whose answer was lost (a read timeout, a server that hung up) from one that
  never left (a refused connection) by it (channels_app.tasks.OUTCOME_UNKNOWN);
- an HTTP 5xx, or a status an adapter declares transient (429 everywhere), is retried,
  after the answer's Retry-After (seconds or an HTTP date) where it has one;
- the platform's own codes are looked up in the adapter's ErrorTable: which clear by
  themselves, which mean the access token died, and what an admin should do about the rest.

An adapter declares its tables and how its answers carry a code; `send_with_token` does
the single refresh-and-retry after a dead token.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import httpx

from channels_app.errors import TransportError
from channels_app.tokens import forget_token, get_token

logger = logging.getLogger("switchboard.platform_api")

Answer = TypeVar("Answer")


def _seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0) if when.tzinfo else None


def retry_after(response: httpx.Response, headers: tuple[str, ...] = ("retry-after",)) -> float | None:
    """When to try again, from the first of `headers` that says it in seconds or as an
    HTTP date (RFC 9110 allows both for Retry-After); None where none does."""
    for header in headers:
        value = response.headers.get(header, "").strip()
        seconds = _seconds(value) if value else None
        if seconds is not None:
            return seconds
    return None


def json_object(response: httpx.Response) -> dict | None:
    """The answer's JSON object; None where the body is not one (a proxy's error page)."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class CodesWhere:
    """The codes a rule picks, where a platform's table is a pattern, not a list."""

    def __init__(self, rule: Callable[[object], bool]) -> None:
        self.rule = rule

    def __contains__(self, code: object) -> bool:
        return self.rule(code)


@dataclass(frozen=True)
class ErrorTable:
    """A platform's error codes, as data its adapter declares."""

    #: codes that clear by themselves (busy, rate limits): the same send later succeeds
    transient: Container = frozenset()
    #: codes saying the access token died before its advertised expiry
    token_dead: Container = frozenset()
    #: what an admin should do about the refusals a misconfigured bot gets most
    hints: Mapping = field(default_factory=dict)

    def hinted(self, detail: str, code: object) -> str:
        hint = self.hints.get(code)
        return f"{detail} ({hint})" if hint else detail

    def refusal(self, detail: str, code: object, retry_after: float | None = None) -> TransportError:
        """The error for a refusal with `code`: permanent unless the code clears by itself."""
        transient = code in self.transient
        return TransportError(
            self.hinted(detail, code), permanent=not transient, retry_after=retry_after if transient else None
        )


class PlatformApi:
    """A platform's send API over one httpx client. Subclasses declare the tables."""

    #: the platform's name in error messages
    label: ClassVar[str]
    #: HTTP statuses besides 5xx after which the same request may well succeed later
    transient_statuses: ClassVar[frozenset[int]] = frozenset({429})
    #: the headers that say when to try again, the first that does wins
    retry_after_headers: ClassVar[tuple[str, ...]] = ("retry-after",)
    errors: ClassVar[ErrorTable] = ErrorTable()
    #: what the platform calls its access token, in the log line of a refresh
    credential_label: ClassVar[str] = "access token"

    def __init__(
        self, http: httpx.Client, base_url: str = "", *, bot_name: str = "", secrets: tuple[str, ...] = ()
    ) -> None:
        self.http = http
        self.base_url = base_url
        self.bot_name = bot_name
        # Parts of a URL (a token in its path) an httpx error's message may repeat.
        self.secrets = tuple(secret for secret in secrets if secret)

    def request(self, method: str, url: str, what: str, **kwargs) -> httpx.Response:
        """One HTTP request; every httpx error becomes a TransportError that is not
        permanent, with the httpx exception as its cause. `url` may be a path on base_url."""
        if url.startswith("/"):
            url = self.base_url + url
        try:
            return self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise TransportError(self.transport_detail(what, exc)) from exc

    def transport_detail(self, what: str, exc: httpx.HTTPError) -> str:
        """What went wrong on the way; a connection error's message names no header or
        query string, and the secrets given are masked where a URL carries them."""
        if isinstance(exc, httpx.TimeoutException):
            return f"{self.label} {what} timed out ({type(exc).__name__})"
        return f"{self.label} {what} failed: {type(exc).__name__}: {self._redact(exc)}"

    def _redact(self, exc: httpx.HTTPError) -> str:
        detail = str(exc)
        for secret in self.secrets:
            detail = detail.replace(secret, "***")
        return detail

    @classmethod
    def is_transient_status(cls, status: int) -> bool:
        return status >= 500 or status in cls.transient_statuses

    def raise_for_status(self, response: httpx.Response, detail: str) -> None:
        """A TransportError that is not permanent, with the answer's Retry-After, for a
        5xx or a declared transient status."""
        if self.is_transient_status(response.status_code):
            raise TransportError(detail, retry_after=self.retry_after(response))

    def retry_after(self, response: httpx.Response) -> float | None:
        return retry_after(response, self.retry_after_headers)

    def not_an_answer(self, detail: str) -> TransportError:
        """The permanent error for an answer that does not come from the platform's API."""
        return TransportError(
            f"{detail} (not an answer of {self.label}'s API: check the bot's API base URL)", permanent=True
        )

    def send_with_token(
        self,
        token_name: str,
        fetch: Callable[[], tuple[str, int]],
        call: Callable[[str], Answer],
        dead_token: Callable[[Answer], object],
    ) -> Answer:
        """call(token) with the cached token. Where dead_token(answer) names a refusal of
        it (expired or revoked before our cached expiry), the token is forgotten, one new
        one fetched and the call made once more; refused again, the send fails, to be
        retried later (a token the platform has just issued is not wrong for long)."""
        answer = call(get_token(token_name, fetch))
        refused = dead_token(answer)
        if refused is None:
            return answer
        logger.info(
            "bot %s: %s refused the cached %s (%s); fetching a new one",
            self.bot_name,
            self.label,
            self.credential_label,
            refused,
        )
        forget_token(token_name)
        answer = call(get_token(token_name, fetch))
        refused = dead_token(answer)
        if refused is not None:
            raise TransportError(f"{self.label} refused a freshly fetched {self.credential_label} too ({refused})")
        return answer
