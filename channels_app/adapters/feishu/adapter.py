"""Feishu / Lark event subscription (webhook mode) in, IM message API out.

Inbound checks, in order: decrypt (if the body is encrypted), signature over the raw body
(if the bot has an Encrypt Key; Feishu does not sign url_verification, so that is known
only after decrypting), Verification Token, then freshness: the signed timestamp and nonce
headers, or for an unencrypted event its own create_time and event_id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from urllib.parse import quote

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse

from channels_app.adapters.feishu import crypto
from channels_app.base import Adapter
from channels_app.errors import MalformedRequest, SignatureInvalid, TransportError
from channels_app.message import OutboundReply, ParsedMessage
from channels_app.platform_api import ErrorTable, PlatformApi, json_object
from channels_app.registry import register
from config import jsonbody

logger = logging.getLogger("switchboard.channels.feishu")

URL_VERIFICATION = "url_verification"
MESSAGE_RECEIVED = "im.message.receive_v1"

AUTH_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES_PATH = "/open-apis/im/v1/messages"

# Feishu's codes for a missing, invalid or expired access token: our cached token died
# before its advertised expiry (revoked, or the app secret was reset).
TOKEN_REFUSED_CODES = frozenset({99991661, 99991663, 99991668, 99991677})
# Rate limits: gateway-wide (99991400, usually with HTTP 429), tenant message quota
# (11232) and per-chat (230020). All clear by themselves, so they are retried.
RATE_LIMIT_CODES = frozenset({99991400, 11232, 230020})
# What an admin should do about the permanent refusals we know.
CODE_HINTS = {
    10003: "Feishu does not know this App ID; check the bot's App ID",
    10014: "Feishu refused the App Secret; copy it again from Credentials & Basic Info",
    230001: "Feishu refused the request's parameters",
    230002: "the bot is not in this chat (it was removed from the group)",
    230006: "the app's bot capability is not enabled or not published",
    230027: "the app lacks a permission; grant im:message:send_as_bot and publish a new version",
    99991672: "the app lacks a permission scope; grant it and publish a new version",
}
# Feishu drops a second send carrying the same `uuid` within an hour; it accepts at most 50 characters.
IDEMPOTENCY_KEY_MAX = 50
MENTION_PLACEHOLDER = re.compile(r"(@_user_\d+|@_all)([ \t]*)")
LEADING_MENTIONS = re.compile(r"^(?:\s*@_user_\d+)+\s*")


def _json_object(data: bytes | str, what: str) -> dict:
    try:
        value = jsonbody.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRequest(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedRequest(f"{what} is JSON but not an object")
    return value


def _same_secret(given: object, expected: str) -> bool:
    # Bytes, because compare_digest refuses non-ASCII str, and the given value is the caller's.
    return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _as_int(value: object, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise MalformedRequest(f"{what} is not an integer: {str(value)[:40]!r}") from exc


def _feishu_uuid(idempotency_key: str) -> str:
    """The key as Feishu's `uuid`. A longer key is hashed, not cut: cutting could make
    the keys of two parts of one reply equal, and Feishu would then drop the second."""
    if len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:IDEMPOTENCY_KEY_MAX]


def _dict(value: object) -> dict:
    """`value` if it is a JSON object, else an empty one: authentic events of an unexpected
    shape are ignored, not allowed to raise."""
    return value if isinstance(value, dict) else {}


class FeishuApi(PlatformApi):
    label = "Feishu"
    # The gateway says when its quota window resets; Retry-After as a fallback.
    retry_after_headers = ("x-ogw-ratelimit-reset", "retry-after")
    errors = ErrorTable(transient=RATE_LIMIT_CODES, token_dead=TOKEN_REFUSED_CODES, hints=CODE_HINTS)
    credential_label = "tenant_access_token"

    def check(self, response: httpx.Response, action: str) -> dict:
        """The JSON answer of a successful call; TransportError saying whether to retry otherwise.
        Feishu's errors carry a `code` in the JSON, with HTTP 200 or a 4xx."""
        data = json_object(response)
        code = data.get("code") if data else None
        detail = f"{action}: HTTP {response.status_code}, code {code}: {str((data or {}).get('msg', ''))[:200]}"
        self.raise_for_status(response, f"Feishu is busy or rate-limited, {detail}")
        if code is None:
            raise self.not_an_answer(detail)
        if code in self.errors.token_dead:
            raise TransportError(f"Feishu refused a freshly fetched token, {detail}", permanent=False)
        if code != 0:
            raise self.errors.refusal(detail, code, retry_after=self.retry_after(response))
        return data

    def dead_token(self, response: httpx.Response) -> str | None:
        """The code of a refusal of the token, None for any other answer."""
        code = (json_object(response) or {}).get("code")
        return f"code {code}" if code in self.errors.token_dead else None


@register
class FeishuAdapter(Adapter):
    platform = "feishu"
    default_api_base = "https://open.feishu.cn"
    # Feishu accepts text bodies up to 150 KB. 4000 characters is far below that even for
    # 4-byte characters escaped twice (content is a JSON string inside JSON), and a reply
    # longer than a few screens reads better as several messages.
    max_reply_length = 4000
    length_unit = "chars"
    # Every send carries the part's idempotency key as `uuid`: Feishu sends at most one
    # message per uuid within an hour and answers a repeat with the first message.
    drops_repeated_sends = True

    def __init__(self, bot) -> None:
        super().__init__(bot)
        self.payload: dict = {}

    # -- inbound -----------------------------------------------------------------------

    def verify(self, request: HttpRequest) -> None:
        body = _json_object(request.body, "the body")
        encrypt_key = str(self.bot.encoding_aes_key or "")
        # What the nonce stays with: the event itself (encrypted anew, it is still the same).
        event_text: bytes | str = request.body
        if "encrypt" in body:
            if not encrypt_key:
                raise MalformedRequest(
                    "the body is encrypted but this bot has no Encrypt Key; copy it from Feishu's "
                    "Event Subscriptions page into the bot's EncodingAESKey field"
                )
            try:
                event_text = crypto.decrypt(body["encrypt"], encrypt_key)
                payload = _json_object(event_text, "the decrypted body")
            except (crypto.DecryptError, MalformedRequest) as exc:
                raise SignatureInvalid(f"cannot decrypt with this bot's Encrypt Key: {exc}") from exc
        else:
            payload = body
        is_url_verification = payload.get("type") == URL_VERIFICATION

        # Feishu's own SDK does not check the signature of url_verification (the token
        # proves it), so neither do we; every other event must be signed.
        signed_at = signed_nonce = None
        if encrypt_key and not is_url_verification:
            signed_at, signed_nonce = self._check_signature(request, encrypt_key)
        self._check_verification_token(payload)

        # A challenge is not replay-checked: answering it twice does nothing.
        if signed_at is not None:
            valid_until = self.check_timestamp(_as_int(signed_at, "X-Lark-Request-Timestamp"))
            self.claim_nonce(signed_nonce, event_text, valid_until, signature_covers_message=True)
        elif not is_url_verification:
            self._check_unsigned_freshness(payload, request.body)
        self.payload = payload

    def _check_signature(self, request: HttpRequest, encrypt_key: str) -> tuple[str, str]:
        timestamp = request.headers.get("X-Lark-Request-Timestamp")
        nonce = request.headers.get("X-Lark-Request-Nonce")
        given = request.headers.get("X-Lark-Signature")
        if not (timestamp and nonce and given):
            raise SignatureInvalid(
                "X-Lark-Request-Timestamp, X-Lark-Request-Nonce or X-Lark-Signature is missing, "
                "but this bot has an Encrypt Key and Feishu signs every event then"
            )
        expected = crypto.signature(timestamp, nonce, encrypt_key, request.body)
        if not _same_secret(given, expected):
            raise SignatureInvalid("X-Lark-Signature does not match: the bot's Encrypt Key differs from Feishu's")
        return timestamp, nonce

    def _check_verification_token(self, payload: dict) -> None:
        expected = str(self.bot.token or "")
        if not expected:
            raise SignatureInvalid(
                "this bot has no Verification Token; copy it from Feishu's Event Subscriptions page "
                "into the bot's Token field"
            )
        # v1 events and url_verification carry `token`; v2 events carry `header.token`.
        header = payload.get("header")
        if "token" in payload:
            given = payload["token"]
        else:
            given = header.get("token") if isinstance(header, dict) else None
        if not _same_secret(given, expected):
            raise SignatureInvalid("the Verification Token does not match the bot's Token field")

    def _check_unsigned_freshness(self, payload: dict, body: bytes) -> None:
        """Without an Encrypt Key there are no signed timestamp and nonce headers, so the
        event's own creation time and id stand in for them (nothing is signed: the id
        stays with the body it came with, and another body under it is refused)."""
        header = payload.get("header")
        if isinstance(header, dict):  # v2: create_time in milliseconds
            event_id = header.get("event_id")
            created = _as_int(header.get("create_time"), "header.create_time") / 1000
        elif "uuid" in payload:  # v1: ts in seconds, with a fraction
            event_id = payload.get("uuid")
            try:
                created = float(payload.get("ts"))
            except (TypeError, ValueError) as exc:
                raise MalformedRequest("the v1 event's ts is not a number") from exc
        else:
            raise MalformedRequest("neither a v2 event (header) nor a v1 event (uuid)")
        if not isinstance(event_id, str) or not event_id:
            raise MalformedRequest("the event has no id")
        self.claim_nonce(f"event:{event_id}", body, self.check_timestamp(created))

    def handshake(self, request: HttpRequest) -> HttpResponse | None:
        if self.payload.get("type") != URL_VERIFICATION:
            return None
        challenge = self.payload.get("challenge")
        if not isinstance(challenge, str):
            raise MalformedRequest("url_verification without a challenge string")
        return JsonResponse({"challenge": challenge})

    def parse(self, request: HttpRequest) -> ParsedMessage | None:
        header = _dict(self.payload.get("header"))
        if header.get("event_type") != MESSAGE_RECEIVED:
            return None
        event = _dict(self.payload.get("event"))
        message, sender = _dict(event.get("message")), _dict(event.get("sender"))
        if message.get("message_type") != "text":
            return None
        if sender.get("sender_type", "user") != "user":
            return None  # another app's message: answering bots invites loops
        try:
            text = jsonbody.loads(message["content"])["text"]
            message_id, chat_id = message["message_id"], message["chat_id"]
            sender_id = sender["sender_id"]["open_id"]
        except (KeyError, TypeError, ValueError):
            # Authentic but not the shape we know: acknowledge, so Feishu stops re-delivering.
            logger.warning(
                "bot %s: im.message.receive_v1 event %s without the expected fields; ignored",
                self.bot.name,
                header.get("event_id"),
            )
            return None
        chat_type = "p2p" if message.get("chat_type") == "p2p" else "group"
        listed = message.get("mentions")
        mentions = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
        bot_open_id = self.bot.extra.get("bot_open_id")
        if chat_type == "p2p":
            mentioned = True  # a direct message is always addressed to the bot
        elif bot_open_id:
            mentioned = any(_dict(m.get("id")).get("open_id") == bot_open_id for m in mentions)
        else:
            # Without the bot's open_id: Feishu delivers group messages only when they
            # @mention the bot, unless the app may read all group messages.
            mentioned = bool(mentions)
        text = self._render_mentions(str(text), mentions, bot_open_id)
        if not text:
            return None  # a bare @mention: nothing to answer
        return ParsedMessage(
            platform_message_id=str(message_id),
            chat_id=str(chat_id),
            chat_type=chat_type,
            sender_id=str(sender_id),
            text=text,
            mentioned=mentioned,
            reply_context={"message_id": message_id, "chat_id": chat_id},
            raw=event,  # not the header: it carries the Verification Token
        )

    @staticmethod
    def _render_mentions(text: str, mentions: list[dict], bot_open_id: str | None) -> str:
        """Replace Feishu's "@_user_N" placeholders: the bot's own is dropped, anyone else
        becomes "@Name" (they are part of what is asked). Without the bot's open_id, the
        mentions a message starts with are taken as the address to the bot and dropped."""
        names = {m.get("key"): str(m.get("name") or "") for m in mentions}
        if bot_open_id:
            dropped = {m.get("key") for m in mentions if _dict(m.get("id")).get("open_id") == bot_open_id}
        else:
            dropped = set()
            text = LEADING_MENTIONS.sub("", text)

        def replace(match: re.Match) -> str:
            key, spacing = match.group(1), match.group(2)
            if key == "@_all":
                return "@all" + spacing
            if key in dropped:
                return ""
            return f"@{names[key]}{spacing}" if names.get(key) else match.group(0)

        return MENTION_PLACEHOLDER.sub(replace, text).strip()

    def ack(self, request: HttpRequest, message: ParsedMessage | None) -> HttpResponse:
        # Any 200 stops Feishu's re-delivery; its SDK answers with a JSON object too.
        return HttpResponse(b"{}", content_type="application/json")

    # -- outbound ----------------------------------------------------------------------

    @property
    def _token_name(self) -> str:
        return f"feishu:{self.bot.uuid}"

    def _fetch_tenant_token(self, api: FeishuApi) -> tuple[str, int]:
        credentials = {"app_id": self.bot.app_id, "app_secret": str(self.bot.app_secret)}
        data = api.check(api.request("POST", AUTH_PATH, "tenant_access_token", json=credentials), "tenant_access_token")
        token, expire = data.get("tenant_access_token"), data.get("expire")
        if not isinstance(token, str) or not token or not isinstance(expire, int):
            raise TransportError("tenant_access_token answer without a token or expire", permanent=False)
        return token, expire

    def _message_request(self, reply: OutboundReply) -> tuple[str, dict, dict]:
        body: dict = {"msg_type": "text", "content": json.dumps({"text": reply.text}, ensure_ascii=False)}
        if reply.idempotency_key:
            body["uuid"] = _feishu_uuid(reply.idempotency_key)
        message_id = reply.reply_context.get("message_id")
        if message_id:
            return f"{self.api_base}{MESSAGES_PATH}/{quote(str(message_id), safe='')}/reply", {}, body
        chat_id = reply.reply_context.get("chat_id") or reply.chat_id
        if not chat_id:
            raise TransportError("the reply has neither a message to answer nor a chat to send to", permanent=True)
        return f"{self.api_base}{MESSAGES_PATH}", {"receive_id_type": "chat_id"}, {**body, "receive_id": chat_id}

    def send(self, reply: OutboundReply, http: httpx.Client) -> None:
        url, params, body = self._message_request(reply)
        api = FeishuApi(http, self.api_base, bot_name=self.bot.name)
        response = api.send_with_token(
            self._token_name,
            lambda: self._fetch_tenant_token(api),
            lambda token: api.request(
                "POST", url, "send", params=params, json=body, headers={"Authorization": f"Bearer {token}"}
            ),
            api.dead_token,
        )
        api.check(response, "send")
