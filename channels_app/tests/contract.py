"""The contract every platform adapter passes (channels_app/tests/test_contract.py and,
for the nonce check, test_contract_nonces.py).

Each adapter folder ships `tests/contract.py` with a `KIT`: what the shared contract
tests need to talk to that platform — a bot with valid credentials pointed at the
platform's fake, signed deliveries of a p2p text message (signed at a chosen time), a
forgery of one, another message under one's nonce, the URL-verification handshake (if
the platform has one), and what the fake received. For the send tests (5xx, timeouts and
4xx, a dead access token, the longest reply) it names the fake's send and token paths and
the answer the platform gives a dead token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal
from urllib.parse import parse_qsl

from django.http import HttpResponse
from django.test import Client

from bots.models import Bot
from tests.fakes.server import FakeServer, Fault


@dataclass(frozen=True)
class Request:
    """One callback as the platform would send it to /callback/<platform>/<uuid>/."""

    method: str
    path: str  # with the query string
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, client: Client) -> HttpResponse:
        return client.generic(
            self.method, self.path, data=self.body, content_type=self.content_type, headers=self.headers
        )

    def with_headers(self, changes: dict[str, str] | None = None, /, **more: str) -> Request:
        """A copy with headers added or replaced; any name (even "self") fits the dict."""
        return replace(self, headers={**self.headers, **(changes or {}), **more})

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters."""
        return dict(parse_qsl(self.path.partition("?")[2]))


def from_headers(method: str, path: str, headers: dict[str, str], body: bytes) -> Request:
    """A Request from a fake's (headers, body) builder, whose headers hold Content-Type."""
    headers = dict(headers)
    content_type = headers.pop("Content-Type", "application/json")
    return Request(method, path, body, content_type, headers)


def flip(text: str) -> str:
    """`text` with its last character changed (same length, same alphabet where it can)."""
    if not text:
        return "x"
    last = text[-1]
    swapped = {"0": "1", "a": "b", "A": "B", "=": "A"}.get(last, "0" if last != "0" else "1")
    return text[:-1] + swapped


@dataclass(frozen=True)
class Handshake:
    request: Request
    expected_status: int
    #: raises AssertionError if the response is not what the platform expects
    check: Callable[[HttpResponse], None]


class ContractKit(ABC):
    """What one platform provides to the contract tests."""

    platform: str
    #: the adapter claims a nonce per request (a signature standing in for one counts);
    #: False where requests carry none (Telegram: the update id alone drops repeats)
    claims_nonces: ClassVar[bool] = True
    #: the request's timestamp is held to CALLBACK_TIMESTAMP_WINDOW (DingTalk has its own hour)
    uses_timestamp_window: ClassVar[bool] = True
    #: what the adapter reads once the signature holds: a JSON body, or (WeCom, WeChat)
    #: the XML message inside the encrypted envelope
    payload_format: ClassVar[Literal["json", "xml"]] = "json"

    @abstractmethod
    def fake_api(self) -> FakeServer:
        """The platform's fake, not started (the test uses it as a context manager)."""

    @contextmanager
    def running(self) -> Iterator[FakeServer]:
        with self.fake_api() as fake:
            self.fake = fake
            try:
                yield fake
            finally:
                self.fake = None

    @abstractmethod
    def make_bot(self, fake_api_url: str) -> Bot:
        """A saved, enabled bot whose credentials the fake accepts, sending to fake_api_url."""

    @abstractmethod
    def text_message(
        self, bot: Bot, msg_id: str, text: str, delivery: int = 1, signed_at: int | None = None
    ) -> Request:
        """A signed, valid delivery of a p2p text message. A later `delivery` of the same
        msg_id is the platform's re-delivery: freshly signed (new nonce or timestamp)
        where the platform does that. signed_at: the request's timestamp (epoch seconds;
        ignored where the platform sends none)."""

    def reuse_nonce(self, bot: Bot, request: Request, msg_id: str, text: str) -> Request | None:
        """Another text message under the nonce and timestamp of `request`, signed as the
        platform would (or as a replayer could, where the signature leaves the body out).
        None where the nonce is the signature itself, so no other message can carry it."""
        return None

    @abstractmethod
    def message_payload(self, bot: Bot, msg_id: str, text: str) -> bytes:
        """What text_message delivers, before the platform signs (and encrypts) it."""

    @abstractmethod
    def deliver(self, bot: Bot, payload: bytes) -> Request:
        """A delivery of any payload, even one broken on purpose, signed (and encrypted)
        as the platform does with the bot's valid credentials: what the adapter then
        parses is `payload` (decoded as UTF-8, with replacement characters, where the
        platform encrypts a string)."""

    @abstractmethod
    def forge(self, request: Request) -> Request:
        """The same request with its signature (or secret) broken."""

    def handshake(self, bot: Bot) -> Handshake | None:
        """The URL verification the platform's console sends, or None if it has none."""
        return None

    @abstractmethod
    def sent_texts(self, fake: FakeServer) -> list[str]:
        """The texts of the messages the fake received through its send API."""

    def platform_message_id(self, msg_id: str) -> str:
        """The InboundMessage.platform_message_id the adapter records for msg_id."""
        return msg_id

    # -- sends ---------------------------------------------------------------------------

    #: the fake's paths (a regex) a reply is sent to, where the send tests put faults
    send_path: ClassVar[str]
    #: the fake's access-token path; None where the adapter sends with a token that does
    #: not expire (then no_token_reason says why the dead-token tests are skipped)
    token_path: ClassVar[str | None] = None
    no_token_reason: ClassVar[str] = ""
    #: why the read-timeout test is skipped, where the adapter does not use the worker's
    #: client timeout; empty where it does
    own_timeout_reason: ClassVar[str] = ""

    #: why the Retry-After test with an HTTP date is skipped, where the platform says
    #: when to try again some other way; empty where it sends Retry-After
    no_retry_after_date_reason: ClassVar[str] = ""

    def rate_limited(self, retry_after: str) -> Fault:
        """The send API's answer when the bot went over its rate limit, saying when to
        try again (`retry_after`: seconds, or an HTTP date)."""
        return Fault(429, {}, headers={"Retry-After": retry_after})

    def token_send_path(self) -> str:
        """The paths the sends that carry the access token go to."""
        return self.send_path

    def token_dead(self) -> Fault:
        """What the platform's send API answers a token that died before its expiry."""
        raise NotImplementedError(f"{self.platform} has an access token: its kit must say how the API refuses it")

    def send_with_token(self, fake: FakeServer) -> None:
        """Make the next sends go through the API that takes the access token (DingTalk
        first tries the conversation's sessionWebhook, which needs none)."""
        return  # elsewhere every send carries the token

    #: the fake this kit is running (set by running()), for kits whose deliveries
    #: carry something the fake issues (DingTalk's sessionWebhook)
    fake: FakeServer | None = None
