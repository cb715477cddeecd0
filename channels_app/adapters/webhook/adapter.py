"""A generic signed JSON webhook, for systems that are not chat platforms.

Both directions are signed the same way with the bot's shared secret (Bot.app_secret):

    X-Switchboard-Timestamp: <unix seconds>
    X-Switchboard-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

Inbound, a message is one JSON object (see README.md); its `id` is the dedup key, so the
sender may repeat a delivery safely. Outbound, each reply part is POSTed as JSON to the
bot's `outbound_url`, with an Idempotency-Key header the receiver can dedup on.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import time
from urllib.parse import urlsplit

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse

from channels_app.base import Adapter
from channels_app.errors import MalformedRequest, SignatureInvalid, TransportError
from channels_app.message import OutboundReply, ParsedMessage
from channels_app.platform_api import PlatformApi
from channels_app.registry import register
from config import jsonbody
from routing.models import ChatType

SIGNATURE_VERSION = "v1"
TIMESTAMP_HEADER = "X-Switchboard-Timestamp"
SIGNATURE_HEADER = "X-Switchboard-Signature"
# The receiver has this long to answer; it should queue the reply and answer at once.
OUTBOUND_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# Ids name rows and conversations: a longer one would have to be cut, and two cut ids
# could become one (a lost message, or two users sharing a conversation).
ID_MAX_LENGTH = 200
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# Statuses after which the same request may well succeed later.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """ "v1=" + hex HMAC-SHA256 keyed with the secret's UTF-8 bytes over "<timestamp>.<body>"."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def _identifier(payload: dict, name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        raise MalformedRequest(f'"{name}" must be a non-empty string (send numbers as strings, e.g. "42")')
    if len(value) > ID_MAX_LENGTH:
        raise MalformedRequest(f'"{name}" is {len(value)} characters long; at most {ID_MAX_LENGTH} are accepted')
    return value


def check_outbound_url(url: object) -> str:
    """The admin's outbound_url, if it is one we will POST to: http(s), a host, no
    credentials, and not a link-local address (where cloud metadata services live)."""
    if not isinstance(url, str) or not url:
        raise TransportError('this bot has no outbound_url: set extra {"outbound_url": "https://…"}', permanent=True)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(
            f"outbound_url must be an http:// or https:// URL with a host, not {url[:100]!r}", permanent=True
        )
    if parts.username is not None or parts.password is not None:
        raise TransportError("outbound_url must not carry credentials: the signature authenticates us", permanent=True)
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url  # a host name
    if address.is_link_local:
        raise TransportError(f"outbound_url points at the link-local address {address}; refused", permanent=True)
    return url


class ReceiverApi(PlatformApi):
    label = "the webhook receiver"
    transient_statuses = RETRYABLE_STATUSES

    def transport_detail(self, what: str, exc: httpx.HTTPError) -> str:
        # `what` is the receiver's host: the errors name it, not us.
        if isinstance(exc, httpx.TimeoutException):
            return f"{what} did not answer in time ({type(exc).__name__})"
        return f"POST to {what} failed: {type(exc).__name__}: {exc}"


@register
class WebhookAdapter(Adapter):
    platform = "webhook"
    # The receiver is a program, not a chat window: no screen to fit and no platform cap,
    # and a split reply is something it has to put back together. 16,000 characters hold
    # a model's longest usual answer (~4,000 tokens) in one request of at most 64 KB of
    # UTF-8, far below any web server's default body limit.
    max_reply_length = 16000
    length_unit = "chars"

    def __init__(self, bot) -> None:
        super().__init__(bot)
        self.payload: dict = {}

    # -- inbound -----------------------------------------------------------------------

    def verify(self, request: HttpRequest) -> None:
        secret = str(self.bot.app_secret or "")
        if not secret:
            raise SignatureInvalid("this bot has no shared secret; set its App Secret field")
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        given = request.headers.get(SIGNATURE_HEADER)
        if not (timestamp and given):
            raise SignatureInvalid(f"{TIMESTAMP_HEADER} or {SIGNATURE_HEADER} is missing")
        if not _TIMESTAMP.fullmatch(timestamp):
            hint = " (it looks like milliseconds)" if timestamp.isdigit() and len(timestamp) == 13 else ""
            raise MalformedRequest(f"{TIMESTAMP_HEADER} is not a number of seconds{hint}")
        expected = sign(secret, timestamp, request.body)
        # Bytes, because compare_digest refuses non-ASCII str and the header is the caller's.
        if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
            raise SignatureInvalid(
                f'{SIGNATURE_HEADER} does not match: sign "<timestamp>.<raw body>" with the bot\'s secret'
            )
        valid_until = self.check_timestamp(int(timestamp))
        self.claim_nonce(f"sig:{given}", request.body, valid_until, signature_covers_message=True)
        try:
            payload = jsonbody.loads(request.body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedRequest(f"the body is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise MalformedRequest("the body is JSON but not an object")
        self.payload = payload

    def parse(self, request: HttpRequest) -> ParsedMessage:
        payload = self.payload
        if "in_reply_to" in payload:
            # Our own reply, sent back to us: an outbound_url pointing at Switchboard, or a
            # captured reply replayed. Answering it would have the bot talk to itself.
            raise MalformedRequest("this is a Switchboard reply, not a message; does outbound_url point back here?")
        message_id = _identifier(payload, "id")
        conversation = _identifier(payload, "conversation")
        user = _identifier(payload, "user")
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            raise MalformedRequest('"text" must be a non-empty string')
        chat_type = payload.get("chat_type", ChatType.P2P)
        if chat_type not in ChatType.values:
            raise MalformedRequest(f'"chat_type" must be "p2p" or "group", not {str(chat_type)[:20]!r}')
        mentioned = payload.get("mentioned", chat_type == ChatType.P2P)
        if not isinstance(mentioned, bool):
            raise MalformedRequest('"mentioned" must be true or false')
        metadata = payload.get("metadata", {})
        if not isinstance(metadata, dict):
            raise MalformedRequest('"metadata" must be a JSON object')
        return ParsedMessage(
            platform_message_id=message_id,
            chat_id=conversation,
            chat_type=chat_type,
            sender_id=user,
            text=text,
            mentioned=mentioned,
            reply_context={"message_id": message_id, "metadata": metadata},
            raw=payload,
        )

    def ack(self, request: HttpRequest, message: ParsedMessage | None) -> HttpResponse:
        # 202: recorded (now or by an earlier delivery of the same id); the reply follows
        # at outbound_url.
        return JsonResponse({"status": "accepted", "id": message.platform_message_id if message else None}, status=202)

    # -- outbound ----------------------------------------------------------------------

    def send(self, reply: OutboundReply, http: httpx.Client) -> None:
        url = check_outbound_url(self.bot.extra.get("outbound_url"))
        secret = str(self.bot.app_secret or "")
        if not secret:
            raise TransportError(
                "this bot has no shared secret to sign replies with; set its App Secret field", permanent=True
            )
        body = json.dumps(
            {
                "id": reply.idempotency_key,
                "in_reply_to": reply.reply_context.get("message_id"),
                "conversation": reply.chat_id,
                "user": reply.sender_id,
                "text": reply.text,
                "part": reply.part,
                "parts": reply.parts,
                "metadata": reply.reply_context.get("metadata") or {},
            },
            ensure_ascii=False,
        ).encode("utf-8")
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            "Idempotency-Key": reply.idempotency_key,
            "User-Agent": "Switchboard-Webhook/1",
        }
        host = urlsplit(url).netloc
        api = ReceiverApi(http, bot_name=self.bot.name)
        # Redirects are not followed: the signed reply goes to the configured URL only.
        response = api.request(
            "POST", url, host, content=body, headers=headers, timeout=OUTBOUND_TIMEOUT, follow_redirects=False
        )
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"{host} answered HTTP {status}: {response.text[:200]!r}"
        api.raise_for_status(response, detail)
        if 300 <= status < 400:
            raise TransportError(
                f"{detail}; redirects are not followed, set outbound_url to the final URL", permanent=True
            )
        raise TransportError(detail, permanent=True)
