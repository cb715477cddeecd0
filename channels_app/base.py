"""The contract every platform adapter fulfils: verify → handshake → parse → ack (or
reply_in_response), and send.

An adapter instance lives for one request (or one send), so `verify` may keep what it
decoded (a decrypted payload) for `parse` to use.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import httpx
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from bots.models import Bot
from channels_app import replay
from channels_app.errors import ReplayedRequest, StaleRequest
from channels_app.message import OutboundReply, ParsedMessage

logger = logging.getLogger("switchboard.callbacks")


def nonce_already_used(name: str) -> ReplayedRequest:
    """The refusal for a nonce claim (`<bot uuid>:<nonce>`) taken by another message."""
    return ReplayedRequest(f"nonce {name.split(':', 1)[1][:40]!r} was already used for another message")


class Adapter(ABC):
    #: the Bot.platform value this adapter serves
    platform: ClassVar[str]
    #: the platform's API host when the bot does not override it (Bot.api_base_url)
    default_api_base: ClassVar[str] = ""
    #: the longest text one sent message may carry, and whether the platform counts
    #: characters or UTF-8 bytes; longer replies are split, never cut
    max_reply_length: ClassVar[int] = 4000
    length_unit: ClassVar[Literal["chars", "bytes"]] = "chars"
    #: sends per second when the bot sets no rate limit of its own
    default_rate_limit_qps: ClassVar[float] = 10.0
    #: whether the platform delivers a repeated send of a reply part (same idempotency
    #: key or same request, soon after) only once; if not, a part sent again after a
    #: worker died during its send may reach the user twice (docs/delivery-guarantees.md)
    drops_repeated_sends: ClassVar[bool] = False

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.claimed_nonce: str | None = None
        #: set by the callback view when it can claim a nonce together with the hand-off
        self.may_defer_nonce = False
        self.deferred_nonce: replay.NonceClaim | None = None
        #: the nonce came before with the same message: the platform sent this again
        self.redelivered = False

    # -- inbound -----------------------------------------------------------------------

    @abstractmethod
    def verify(self, request: HttpRequest) -> None:
        """Prove the request comes from the platform (signature, timestamp, nonce).
        Raise a CallbackError subclass otherwise."""

    def handshake(self, request: HttpRequest) -> HttpResponse | None:
        """Answer a URL-verification request, or return None if this is not one."""
        return None

    @abstractmethod
    def parse(self, request: HttpRequest) -> ParsedMessage | None:
        """Turn a verified request into a message; None for events we only acknowledge."""

    def ack(self, request: HttpRequest, message: ParsedMessage | None) -> HttpResponse:
        """What the platform gets once the message is safely recorded."""
        return HttpResponse(b"", content_type="text/plain")

    def reply_in_response(self, request: HttpRequest, message: ParsedMessage) -> HttpResponse | None:
        """For a platform that takes the answer only as the callback's own response (a
        WeChat Official Account without the customer-service API): wait, within the
        platform's deadline, for the reply to `message`, recorded now or on an earlier
        delivery, and return the response that carries it. None, the default, means
        "answer with ack() at once"; the reply then goes out through `send`."""
        return None

    # -- outbound ----------------------------------------------------------------------

    @abstractmethod
    def send(self, reply: OutboundReply, http: httpx.Client) -> None:
        """Deliver one reply part through the platform's API; raise TransportError.
        A part is sent again, with the same idempotency key, when its first send's
        outcome was lost: let the platform drop the repeat wherever its API allows."""

    @property
    def api_base(self) -> str:
        return (self.bot.api_base_url or self.default_api_base).rstrip("/")

    # -- shared checks -----------------------------------------------------------------

    def check_timestamp(self, timestamp_seconds: float) -> float:
        """Refuse a timestamp farther than CALLBACK_TIMESTAMP_WINDOW from our clock.
        Returns until when it passes: its nonce must be remembered that long, up to
        twice the window for a request signed ahead of our clock."""
        window = settings.CALLBACK_TIMESTAMP_WINDOW
        skew = abs(time.time() - timestamp_seconds)
        if skew > window:
            raise StaleRequest(f"timestamp is {skew:.0f} s away from our clock (window {window} s)")
        return timestamp_seconds + window

    def claim_nonce(
        self, nonce: str, message: bytes | str, valid_until: float, *, signature_covers_message: bool = False
    ) -> None:
        """Claim a nonce for this request's message until its timestamp stops passing
        (`valid_until`, from check_timestamp). The nonce with another message is a
        replay (ReplayedRequest); with the same message it is the platform sending the
        request again, let through to be answered as usual. The view releases a new
        claim if the request then fails, so the platform's retry is not refused.

        message: what the nonce must stay with. Where the signature covers the message,
        the message as signed, decrypted where it is encrypted (a copy encrypted anew is
        the same message; a part outside the signature can be changed by anyone on the
        way); the whole body where nothing of it is signed.

        signature_covers_message: the signature just checked covers the message itself,
        so a replay can only repeat a message and its id. The view may then claim the
        nonce in the same Redis round trip as the hand-off, after the INSERT, instead of
        now (docs/performance.md); it claims it alone wherever no hand-off follows."""
        claim = replay.NonceClaim.of(f"{self.bot.uuid}:{nonce}", message, valid_until)
        if signature_covers_message and self.may_defer_nonce:
            self.deferred_nonce = claim
            return
        self.settle_claim(claim, replay.claim(claim))

    def claim_deferred_nonce(self) -> None:
        """Claim, alone, the nonce whose claim was deferred (none: nothing to do)."""
        claim, self.deferred_nonce = self.deferred_nonce, None
        if claim is not None:
            self.settle_claim(claim, replay.claim(claim))

    def settle_claim(self, claim: replay.NonceClaim, outcome: replay.Claim) -> None:
        """Act on what the nonce cache answered: keep a new claim (for the view to
        release), let a re-delivery through, refuse a replay."""
        if outcome is replay.Claim.OTHER_MESSAGE:
            raise nonce_already_used(claim.name)
        if outcome is replay.Claim.SAME_MESSAGE:
            # Not ours to release: the request that made the claim may still be running.
            self.redelivered = True
            logger.info(
                "callback for %s: nonce %r came again with the same message, answered as a re-delivery",
                self.bot.name,
                claim.name.split(":", 1)[1][:40],
            )
            return
        self.claimed_nonce = claim.name
