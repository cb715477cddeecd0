"""Telegram Bot API: webhook updates in, sendMessage out.

Inbound: Telegram's only proof is the secret token given to setWebhook, echoed in the
X-Telegram-Bot-Api-Secret-Token header of every update. There is no timestamp, nonce or
signature over the body, so there is nothing for a replay check to hold on to: whoever
can replay a request knows the secret and can forge new ones. Re-deliveries are what
happens in practice (Telegram repeats an update until it gets a 2xx), and the message
row's unique key, chat id and message id, makes them harmless.

Outbound: sendMessage with the bot token in the URL path, quoting the message answered.
The token comes from BotFather and does not expire.
"""

from __future__ import annotations

import hmac
import logging
import re

import httpx
from django.http import HttpRequest

from bots.models import Bot
from channels_app.base import Adapter
from channels_app.errors import MalformedRequest, SignatureInvalid, TransportError
from channels_app.message import OutboundReply, ParsedMessage
from channels_app.platform_api import CodesWhere, ErrorTable, PlatformApi, json_object
from channels_app.registry import register
from config import jsonbody
from routing.models import ChatType

logger = logging.getLogger("switchboard.adapters.telegram")

AUTH_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# What setWebhook accepts as secret_token.
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
# A BotFather token: the bot's numeric id, a colon, the secret part. Checked before it
# goes into a URL path, so a stray "/" or "?" cannot change which endpoint we call.
BOT_TOKEN = re.compile(r"(?P<bot_id>[0-9]{1,20}):[A-Za-z0-9_-]{20,}")
GROUP_CHAT_TYPES = frozenset({"group", "supergroup"})
UNKNOWN_BOT_HINT = "Telegram does not know this bot token: copy it again from BotFather into the bot's Token field"


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _same_secret(given: str | None, expected: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII str, and the header is the caller's.
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _clears_by_itself(code: object) -> bool:
    # Telegram's error_code is an HTTP status: 429 and 5xx clear by themselves.
    return isinstance(code, int) and PlatformApi.is_transient_status(code)


class TelegramApi(PlatformApi):
    label = "Telegram"
    # 403: blocked by the user, kicked from the group; 400: chat not found, text refused…
    errors = ErrorTable(transient=CodesWhere(_clears_by_itself), hints={401: UNKNOWN_BOT_HINT, 404: UNKNOWN_BOT_HINT})

    @classmethod
    def check(cls, method: str, status: int, data: dict | None) -> dict:
        """The answer of a successful call; TransportError saying whether to retry otherwise."""
        if data is not None and data["ok"] is True:
            return data
        if data is None:
            if cls.is_transient_status(status):
                raise TransportError(f"Telegram {method}: HTTP {status}")
            raise TransportError(
                f"Telegram {method}: HTTP {status}, not an answer of the Bot API (check the bot's API base URL)",
                permanent=True,
            )
        code = data.get("error_code") if isinstance(data.get("error_code"), int) else status
        detail = f"Telegram {method}: {code} {str(data.get('description', ''))[:200]}"
        # Telegram says when to try again in the answer, not in a header.
        retry_after = _dict(data.get("parameters")).get("retry_after")
        usable = isinstance(retry_after, int | float) and not isinstance(retry_after, bool)
        raise cls.errors.refusal(detail, code, retry_after=float(retry_after) if usable else None)


class _Text:
    """Message text addressed the way Telegram's entities address it: offsets and lengths
    in UTF-16 code units, so an emoji before a mention counts twice."""

    def __init__(self, text: str) -> None:
        self.units = text.encode("utf-16-le")

    def span(self, entity: dict) -> tuple[int, int] | None:
        offset, length = entity.get("offset"), entity.get("length")
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length <= 0:
            return None
        start, end = offset * 2, (offset + length) * 2
        return (start, end) if end <= len(self.units) else None

    def slice(self, span: tuple[int, int]) -> str:
        return self.units[span[0] : span[1]].decode("utf-16-le", errors="replace")

    def without(self, spans: list[tuple[int, int, bool]]) -> str:
        """The text with these (start, end, then_blanks) spans removed; with then_blanks,
        the spaces that follow the span go too, so "ask @bot now" reads "ask now"."""
        text, position = "", 0
        for start, end, then_blanks in sorted(spans):
            if start < position:
                continue  # overlapping entities: the first removal covers it
            text += self.units[position:start].decode("utf-16-le", errors="replace")
            position = end
            if then_blanks:
                while self.units[position : position + 2] in (b" \x00", b"\t\x00"):
                    position += 2
        return text + self.units[position:].decode("utf-16-le", errors="replace")


@register
class TelegramAdapter(Adapter):
    platform = "telegram"
    default_api_base = "https://api.telegram.org"
    # sendMessage takes 1-4096 characters of text; Telegram counts Unicode code points
    # (what Python's len() counts), not UTF-16 units or bytes.
    max_reply_length = 4096
    length_unit = "chars"

    def __init__(self, bot: Bot) -> None:
        super().__init__(bot)
        self.update: dict = {}

    # -- inbound -----------------------------------------------------------------------

    def verify(self, request: HttpRequest) -> None:
        expected = str(self.bot.app_secret or "")
        if not expected:
            raise SignatureInvalid(
                "this bot has no webhook secret (App secret); run manage.py telegram_set_webhook to set one"
            )
        if not _same_secret(request.headers.get(AUTH_HEADER), expected):
            raise SignatureInvalid(
                f"{AUTH_HEADER} does not match the bot's App secret "
                "(the webhook was set with another secret, or the request is not Telegram's)"
            )
        try:
            update = jsonbody.loads(request.body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedRequest(f"the body is not JSON: {exc}") from exc
        if not isinstance(update, dict):
            raise MalformedRequest("the body is JSON but not an object")
        if not isinstance(update.get("update_id"), int):
            raise MalformedRequest("the update has no update_id")
        self.update = update

    def parse(self, request: HttpRequest) -> ParsedMessage | None:
        # Only new messages: edited_message, channel_post, callback_query, my_chat_member …
        # are acknowledged with 200, or Telegram would repeat them.
        message = _dict(self.update.get("message"))
        text, chat, sender = message.get("text"), _dict(message.get("chat")), _dict(message.get("from"))
        chat_id, message_id = chat.get("id"), message.get("message_id")
        if not isinstance(text, str) or not isinstance(chat_id, int) or not isinstance(message_id, int):
            return None  # a photo, sticker, service message, or not a message at all
        sender_chat = _dict(message.get("sender_chat"))
        if sender.get("is_bot") and not sender_chat:
            return None  # another bot: answering bots invites loops
        if chat.get("type") == "private":
            chat_type = ChatType.P2P
        elif chat.get("type") in GROUP_CHAT_TYPES:
            chat_type = ChatType.GROUP
        else:
            return None  # channels: the bot has no one to answer
        # An anonymous group admin or a linked channel speaks as a chat, not a user.
        sender_id = sender_chat.get("id") if sender_chat else sender.get("id")
        mentioned, text = self._address(message, text)
        if chat_type == ChatType.P2P:
            mentioned = True  # a private chat is always with the bot
        if not text:
            return None  # a bare @mention: nothing to answer
        return ParsedMessage(
            # Message ids are unique within a chat and never reused. update_id is not a
            # safe key on its own: after a week without updates Telegram starts it afresh
            # at a random value.
            platform_message_id=f"{chat_id}:{message_id}",
            chat_id=str(chat_id),
            chat_type=chat_type,
            sender_id=str(sender_id),
            text=text,
            mentioned=mentioned,
            reply_context={"chat_id": chat_id, "message_id": message_id},
            raw=self.update,
        )

    @property
    def _username(self) -> str:
        return str(self.bot.extra.get("bot_username") or "").strip().lstrip("@").lower()

    @property
    def _bot_id(self) -> int | None:
        match = BOT_TOKEN.fullmatch(str(self.bot.token or ""))
        return int(match["bot_id"]) if match else None

    def _is_the_bot(self, user: object) -> bool:
        user = _dict(user)
        username = str(user.get("username") or "").lower()
        return (self._bot_id is not None and user.get("id") == self._bot_id) or bool(
            self._username and username == self._username
        )

    def _address(self, message: dict, text: str) -> tuple[bool, str]:
        """Whether the message is addressed to the bot, and its text without the bot's
        @mention (a "/command@bot" keeps its "/command")."""
        units = _Text(text)
        handle = f"@{self._username}" if self._username else None
        mentioned = self._is_the_bot(_dict(message.get("reply_to_message")).get("from"))
        spans = []
        entities = message.get("entities")
        for entity in entities if isinstance(entities, list) else []:
            entity = _dict(entity)
            span = units.span(entity)
            if span is None:
                continue
            kind, content = entity.get("type"), units.slice(span)
            if kind == "mention" and handle and content.lower() == handle:
                mentioned = True
                spans.append((*span, True))
            elif kind == "text_mention" and self._is_the_bot(entity.get("user")):
                mentioned = True
                spans.append((*span, True))
            elif kind == "bot_command" and handle and content.lower().endswith(handle):
                mentioned = True
                spans.append((span[1] - len(handle) * 2, span[1], False))
        return mentioned, units.without(spans).strip()

    # ack: the base class's empty 200. Telegram needs a 2xx, nothing more.

    # -- outbound ----------------------------------------------------------------------

    def _bot_token(self) -> str:
        token = str(self.bot.token or "")
        if not BOT_TOKEN.fullmatch(token):
            raise TransportError(
                "the bot's Token field is not a Telegram bot token (digits, a colon, then the "
                "secret part, as BotFather shows it)",
                permanent=True,
            )
        return token

    def request(self, http: httpx.Client, method: str, payload: dict) -> tuple[int, dict | None]:
        """POST one Bot API method; the HTTP status and the JSON answer (None if there is
        none). Errors name the method, never the URL: the token is part of it."""
        token = self._bot_token()
        api = TelegramApi(http, self.api_base, bot_name=self.bot.name, secrets=(token,))
        response = api.request("POST", f"/bot{token}/{method}", method, json=payload)
        data = json_object(response)
        return response.status_code, data if data is not None and isinstance(data.get("ok"), bool) else None

    def call(self, http: httpx.Client, method: str, payload: dict) -> dict:
        return TelegramApi.check(method, *self.request(http, method, payload))

    def send(self, reply: OutboundReply, http: httpx.Client) -> None:
        chat_id = reply.reply_context.get("chat_id", reply.chat_id)
        payload: dict = {"chat_id": chat_id, "text": reply.text}
        message_id = reply.reply_context.get("message_id")
        if message_id:
            # Quote the question; if it was deleted meanwhile, answer anyway.
            payload["reply_parameters"] = {"message_id": message_id, "allow_sending_without_reply": True}
        status, data = self.request(http, "sendMessage", payload)
        migrated = _dict((data or {}).get("parameters")).get("migrate_to_chat_id")
        if data is not None and data["ok"] is False and isinstance(migrated, int):
            # The group became a supergroup with a new id; the message to quote stayed behind.
            logger.info("bot %s: chat %s became %s; sending there", self.bot.name, chat_id, migrated)
            status, data = self.request(http, "sendMessage", {"chat_id": migrated, "text": reply.text})
        TelegramApi.check("sendMessage", status, data)
