"""Slack Events API (HTTP request URL) in, chat.postMessage out.

Inbound: every request is signed with the app's Signing Secret over "v0:<timestamp>:<raw
body>", url_verification included. We check the signature before reading the body, then
the timestamp window, then claim the signature as a nonce (it covers the timestamp, so
each delivery, Slack's retries included, has its own).

Only two kinds of event carry a question: `message` in a direct message (channel_type
im) and `app_mention` anywhere. Edits, joins, bot posts (anything with a subtype or a
bot_id) and the bot's own messages are acknowledged and dropped, or the bot would answer
itself.

Outbound: chat.postMessage with the bot token, in the thread of the message answered.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse

from channels_app.base import Adapter
from channels_app.errors import MalformedRequest, SignatureInvalid, TransportError
from channels_app.message import OutboundReply, ParsedMessage
from channels_app.platform_api import ErrorTable, PlatformApi, json_object
from channels_app.registry import register
from config import jsonbody
from routing.models import ChatType

logger = logging.getLogger("switchboard.adapters.slack")

SIGNATURE_VERSION = "v0"
POST_MESSAGE_PATH = "/api/chat.postMessage"
URL_VERIFICATION = "url_verification"
EVENT_CALLBACK = "event_callback"
# ASCII digits only, and few of them: no real clock needs more than 12 digits of seconds.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

# Errors that clear by themselves: rate limits and Slack's own trouble. Every other
# `ok: false` is about our request or the bot's set-up, and repeating it changes nothing.
TRANSIENT_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)
# What an admin should do about the permanent refusals a misconfigured bot gets most.
ERROR_HINTS = {
    "invalid_auth": "Slack refused the bot token; copy the Bot User OAuth Token (xoxb-…) into the bot's Token field",
    "not_authed": "no token was sent; fill in the bot's Token field",
    "token_revoked": "the token was revoked (the app was uninstalled?); reinstall the app and copy the new token",
    "token_expired": "the token expired: token rotation is on for this app; turn it off and reinstall",
    "account_inactive": "the token belongs to a deleted user or workspace, or the app was deactivated",
    "not_in_channel": "the bot is not a member of this channel; invite it with /invite @<bot name>",
    "channel_not_found": "the channel is unknown to the bot (a private channel it was not invited to?)",
    "missing_scope": "the app lacks the chat:write scope; add it under OAuth & Permissions and reinstall",
    "is_archived": "the channel is archived",
    "restricted_action": "a workspace setting stops the bot from posting in this channel",
}
# A user mention at the start of the text: <@U123> or <@U123|name>.
_LEADING_MENTION = re.compile(r"^\s*<@([UW][A-Z0-9]+)(?:\|[^>]*)?>[\s:,]*")


def signature(signing_secret: str, timestamp: str, body: bytes) -> str:
    """Slack's request signature: "v0=" + hex HMAC-SHA256 keyed with the Signing Secret
    (its characters as they are, not hex-decoded) over "v0:<timestamp>:<raw body>"."""
    base = f"{SIGNATURE_VERSION}:{timestamp}:".encode() + body
    return f"{SIGNATURE_VERSION}=" + hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def escape(text: str) -> str:
    """The three characters Slack reads as markup, as entities. Unescaped, a "<!channel>"
    or "<@U…>" in a model's answer would notify a whole channel or a person."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    """What the user typed: Slack sends &, < and > as entities and nothing else."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


class SlackApi(PlatformApi):
    label = "Slack"
    errors = ErrorTable(transient=TRANSIENT_ERRORS, hints=ERROR_HINTS)

    def check(self, response: httpx.Response, method: str) -> dict:
        """The answer of a successful call; TransportError saying whether to retry otherwise.
        Slack answers `ok: false` with an `error` name, mostly with HTTP 200."""
        data = json_object(response)
        error = data.get("error") if data else None
        detail = f"{method}: HTTP {response.status_code}, error {error}"
        self.raise_for_status(response, f"Slack is busy or rate-limited, {detail}")
        if data is None or not isinstance(data.get("ok"), bool):
            raise self.not_an_answer(detail)
        if not data["ok"]:
            raise self.errors.refusal(detail, str(error), retry_after=self.retry_after(response))
        return data


@register
class SlackAdapter(Adapter):
    platform = "slack"
    default_api_base = "https://slack.com"
    # Slack truncates text beyond 40,000 characters and advises at most 4,000. Escaping
    # can grow a part (one "&" becomes "&amp;"), at most fivefold: 20,000, still whole.
    max_reply_length = 4000
    length_unit = "chars"

    def __init__(self, bot) -> None:
        super().__init__(bot)
        self.payload: dict = {}

    # -- inbound -----------------------------------------------------------------------

    def verify(self, request: HttpRequest) -> None:
        signing_secret = str(self.bot.app_secret or "")
        if not signing_secret:
            raise SignatureInvalid(
                "this bot has no Signing Secret; copy it from the Slack app's Basic Information page "
                "into the bot's App Secret field"
            )
        timestamp = request.headers.get("X-Slack-Request-Timestamp")
        given = request.headers.get("X-Slack-Signature")
        if not (timestamp and given):
            raise SignatureInvalid("X-Slack-Request-Timestamp or X-Slack-Signature is missing")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise MalformedRequest("X-Slack-Request-Timestamp is not a number of seconds")
        expected = signature(signing_secret, timestamp, request.body)
        # Bytes, because compare_digest refuses non-ASCII str and the header is the caller's.
        if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
            raise SignatureInvalid("X-Slack-Signature does not match: the bot's Signing Secret differs from Slack's")
        valid_until = self.check_timestamp(int(timestamp))
        # The signature covers the timestamp and the body: the very same request sent
        # again is a re-delivery (Slack's retries are signed anew), never a new message.
        self.claim_nonce(f"sig:{given}", request.body, valid_until, signature_covers_message=True)
        try:
            payload = jsonbody.loads(request.body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedRequest(
                f"the body is not JSON ({exc}); only the Events API is served here, not slash commands or interactivity"
            ) from exc
        if not isinstance(payload, dict):
            raise MalformedRequest("the body is JSON but not an object")
        self.payload = payload

    def handshake(self, request: HttpRequest) -> HttpResponse | None:
        if self.payload.get("type") != URL_VERIFICATION:
            return None
        challenge = self.payload.get("challenge")
        if not isinstance(challenge, str) or not challenge:
            raise MalformedRequest("url_verification without a challenge string")
        return JsonResponse({"challenge": challenge})

    def parse(self, request: HttpRequest) -> ParsedMessage | None:
        kind = self.payload.get("type")
        if not isinstance(kind, str):
            raise MalformedRequest("the body has no type")
        if kind != EVENT_CALLBACK:
            return None  # app_rate_limited and other envelopes: nothing to answer
        event = self.payload.get("event")
        event_id = self.payload.get("event_id")
        if not isinstance(event, dict) or not isinstance(event_id, str) or not event_id:
            raise MalformedRequest("event_callback without an event object or an event_id")

        event_type = event.get("type")
        channel_type = event.get("channel_type")
        if event_type == "message":
            if channel_type != "im":
                return None  # a channel message that does not mention the bot: app_mention covers those
        elif event_type != "app_mention":
            return None
        if "subtype" in event or event.get("bot_id"):
            return None  # edits, deletions, joins, other bots' and our own posts
        user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
        if not all(isinstance(value, str) and value for value in (user, channel, ts)):
            raise MalformedRequest(f"{event_type} event {event_id} without user, channel or ts")
        bot_user_id = self._bot_user_id()
        if user == bot_user_id:
            return None

        text = event.get("text") if isinstance(event.get("text"), str) else ""
        direct = channel_type == "im" or channel.startswith("D")
        text = self._strip_leading_mention(text, bot_user_id, any_user=event_type == "app_mention")
        text = unescape(text).strip()
        if not text:
            return None  # a bare @mention: nothing to answer
        thread_ts = event.get("thread_ts") if isinstance(event.get("thread_ts"), str) else None
        return ParsedMessage(
            # Slack identifies a message by channel and ts. A retry repeats both, and so does
            # the second event of one message (an @mention in a DM arrives as message.im and
            # as app_mention, with different event_ids): either way, one row, one answer.
            platform_message_id=f"{channel}:{ts}",
            chat_id=channel,
            chat_type=ChatType.P2P if direct else ChatType.GROUP,
            sender_id=user,
            text=text,
            mentioned=direct or event_type == "app_mention",
            # A message in a thread is answered in that thread, any other starts one.
            reply_context={"channel": channel, "thread_ts": thread_ts or ts},
            # Not the envelope: it carries the app's legacy verification token.
            raw={"event_id": event_id, "team_id": self.payload.get("team_id"), "event": event},
        )

    def _bot_user_id(self) -> str | None:
        """The bot's own user id: the admin's setting, else the installation Slack lists
        in the envelope's `authorizations` (the bot user for a bot-token install)."""
        configured = self.bot.extra.get("bot_user_id")
        if isinstance(configured, str) and configured:
            return configured
        authorizations = self.payload.get("authorizations")
        for authorization in authorizations if isinstance(authorizations, list) else []:
            authorization = _dict(authorization)
            if authorization.get("is_bot") and isinstance(authorization.get("user_id"), str):
                return authorization["user_id"]
        return None

    @staticmethod
    def _strip_leading_mention(text: str, bot_user_id: str | None, any_user: bool) -> str:
        """Drop the "<@BOT>" the text starts with: it addresses the bot, it is not part of
        the question. With the bot's id unknown, an app_mention's leading mention is taken
        as the bot's (the event means the bot was mentioned), a DM's is kept."""
        match = _LEADING_MENTION.match(text)
        if match and (match.group(1) == bot_user_id or (bot_user_id is None and any_user)):
            return text[match.end() :]
        return text

    def ack(self, request: HttpRequest, message: ParsedMessage | None) -> HttpResponse:
        response = HttpResponse(b"", content_type="text/plain")
        if request.headers.get("X-Slack-Retry-Num"):
            # A re-delivery, handled like the first (the row's unique key drops it if the
            # first was recorded); the header stops any further retry of it.
            response["X-Slack-No-Retry"] = "1"
        return response

    # -- outbound ----------------------------------------------------------------------

    def send(self, reply: OutboundReply, http: httpx.Client) -> None:
        token = str(self.bot.token or "")
        if not token:
            raise TransportError(
                "this bot has no bot token: copy the xoxb-… token into its Token field", permanent=True
            )
        channel = reply.reply_context.get("channel") or reply.chat_id
        if not channel:
            raise TransportError("the reply has no channel to post to", permanent=True)
        body = {"channel": channel, "text": escape(reply.text)}
        thread_ts = reply.reply_context.get("thread_ts")
        if thread_ts:
            body["thread_ts"] = thread_ts
        api = SlackApi(http, self.api_base, bot_name=self.bot.name)
        # The message of a transport error names no header, so the token does not leak.
        response = api.request(
            "POST",
            POST_MESSAGE_PATH,
            "chat.postMessage",
            json=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"},
        )
        api.check(response, "chat.postMessage")
