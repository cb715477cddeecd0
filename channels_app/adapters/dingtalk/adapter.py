"""DingTalk (钉钉) enterprise-internal robot in HTTP mode: signed JSON in, the
conversation's sessionWebhook (or the robot send API) out.

Inbound: DingTalk signs only its `timestamp` header, not the body: `sign` is
base64(HMAC-SHA256(AppSecret, timestamp + "\\n" + AppSecret)). Anyone who sees one
request could pair its headers with another body for the hour DingTalk allows, so each
(timestamp, sign) pair is accepted once, and the sessionWebhook a body names must be on
DingTalk's own hosts (or the bot's configured API host) before we ever POST to it.

Outbound: the sessionWebhook needs no token and answers in the same conversation; it
lives about 90 minutes. Past its expiry (or if DingTalk refuses it) the reply goes
through the robot send API with an app access token, cached in Redis for every worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time

import httpx
from django.http import HttpRequest

from bots.models import Bot
from channels_app.base import Adapter
from channels_app.errors import MalformedRequest, SignatureInvalid, StaleRequest, TransportError
from channels_app.message import OutboundReply, ParsedMessage
from channels_app.platform_api import CodesWhere, ErrorTable, PlatformApi, json_object
from channels_app.registry import register
from config import jsonbody
from routing.models import ChatType

logger = logging.getLogger("switchboard.adapters.dingtalk")

# DingTalk's rule for the timestamp header: more than an hour away from our clock is
# not DingTalk. The claimed (timestamp, sign) pairs are kept exactly as long.
SIGNATURE_WINDOW_SECONDS = 3600
_TIMESTAMP = re.compile(r"[0-9]{1,15}")

AUTH_PATH = "/v1.0/oauth2/accessToken"
ONE_TO_ONE_PATH = "/v1.0/robot/oToMessages/batchSend"
GROUP_PATH = "/v1.0/robot/groupMessages/send"
TEXT_MSG_KEY = "sampleText"
# The robot send API refuses a msgParam longer than this (bytes of the JSON string).
MSG_PARAM_MAX_BYTES = 15_000
# A sessionWebhook this close to its expiry is not started on: the POST could arrive late.
SESSION_WEBHOOK_MARGIN_MS = 30_000
# sessionWebhook errcodes that clear by themselves: system busy, and the robot's send
# frequency limits. Any other refusal of the webhook falls back to the robot API.
WEBHOOK_RETRYABLE_ERRCODES = frozenset({-1, 130101, 410100})
# What an admin should do about the robot API refusals a misconfigured bot gets most.
CODE_HINTS = {
    "invalidClientIdOrSecret": "DingTalk refused the AppKey/AppSecret; copy both again from 凭证与基础信息",
    "invalidParameter.robotCode.notExsit": "the robot is not in this group, or its robotCode differs: "
    'set extra {"robot_code": "…"}',
    "invalidParameter.robotCode.auth": 'the robotCode does not belong to this AppKey: set extra {"robot_code": "…"}',
    "Forbidden.AccessDenied.AccessTokenPermissionDenied": "the app lacks the permission qyapi_robot_sendmsg "
    "(企业内机器人发送消息权限); grant it in 权限管理",
}
# Labels of a DingTalk host name: oapi.dingtalk.com, api.dingtalk.com, …
_DINGTALK_HOST = re.compile(r"(?:[a-z0-9-]+\.)*dingtalk\.com")


def signature(timestamp: str, app_secret: str) -> str:
    """The `sign` header DingTalk sends with `timestamp`."""
    digest = hmac.new(app_secret.encode("utf-8"), f"{timestamp}\n{app_secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _json_object(data: bytes) -> dict:
    try:
        value = jsonbody.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedRequest("the body is JSON but not an object")
    return value


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _is_rate_limit(code: object) -> bool:
    # The gateway's throttling codes: Throttling.Api, Forbidden.AccessDenied.QpsLimitForApi, …
    code = str(code).lower()
    return "throttl" in code or "qpslimit" in code or "flowcontrol" in code


class DingTalkApi(PlatformApi):
    label = "DingTalk"
    errors = ErrorTable(transient=CodesWhere(_is_rate_limit), hints=CODE_HINTS)

    def check(self, response: httpx.Response, action: str) -> dict:
        """The JSON answer of a successful call; TransportError saying whether to retry otherwise.
        The v1.0 API reports errors with the HTTP status and {"code", "message", "requestid"}."""
        data = json_object(response)
        code = str((data or {}).get("code") or "")
        detail = f"DingTalk {action}: HTTP {response.status_code}"
        if code:
            detail += f", code {code}: {str((data or {}).get('message', ''))[:200]}"
        self.raise_for_status(response, f"DingTalk is busy or rate-limited, {detail}")
        if code in self.errors.transient:
            raise self.errors.refusal(detail, code, retry_after=self.retry_after(response))
        if data is None:
            raise self.not_an_answer(detail)
        if response.status_code != 200:
            raise self.errors.refusal(detail, code)
        return data

    def session_refusal(self, response: httpx.Response) -> dict | None:
        """The sessionWebhook's answer where DingTalk refused the webhook itself (to try
        the robot API instead); None where it took the message. TransportError where
        the same send later may pass."""
        self.raise_for_status(response, f"sessionWebhook answered HTTP {response.status_code}")
        data = json_object(response) or {}
        errcode = data.get("errcode")
        if response.status_code == 200 and errcode == 0:
            return None
        if errcode in WEBHOOK_RETRYABLE_ERRCODES:
            raise TransportError(
                f"sessionWebhook is busy or rate-limited: errcode {errcode} {str(data.get('errmsg', ''))[:200]}"
            )
        return data


@register
class DingTalkAdapter(Adapter):
    platform = "dingtalk"
    default_api_base = "https://api.dingtalk.com"
    # The robot API takes at most 15 000 bytes of msgParam, the JSON string {"content": …}.
    # 6000 UTF-8 bytes of text stay below that even if every character needs a two-byte
    # JSON escape (newlines, quotes), and well below the sessionWebhook's body limit.
    # Bytes, not characters: a Chinese character is three of them.
    max_reply_length = 6000
    length_unit = "bytes"

    def __init__(self, bot: Bot) -> None:
        super().__init__(bot)
        self.payload: dict = {}

    # -- inbound -----------------------------------------------------------------------

    def verify(self, request: HttpRequest) -> None:
        timestamp, given = request.headers.get("timestamp"), request.headers.get("sign")
        if not timestamp or not given:
            raise SignatureInvalid("the timestamp or sign header is missing: not a DingTalk robot callback")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise MalformedRequest("the timestamp header is not a number of milliseconds")
        app_secret = str(self.bot.app_secret or "")
        if not app_secret:
            raise SignatureInvalid("this bot has no AppSecret; copy it from 凭证与基础信息 into the bot's App secret")
        # Bytes: compare_digest refuses non-ASCII str, and the header is the caller's.
        if not hmac.compare_digest(given.encode("utf-8"), signature(timestamp, app_secret).encode("ascii")):
            raise SignatureInvalid("sign does not match: the bot's App secret differs from the app's AppSecret")
        signed_at = int(timestamp) / 1000
        skew = abs(time.time() - signed_at)
        if skew > SIGNATURE_WINDOW_SECONDS:
            raise StaleRequest(f"timestamp is {skew:.0f} s away from our clock (DingTalk allows an hour)")
        # Each signed timestamp is accepted with one body, and remembered for as long as it
        # would pass the window check: up to two hours for one ahead of our clock (not
        # CALLBACK_TIMESTAMP_WINDOW). The sign covers only the timestamp, so the claim
        # is made now, never deferred: captured headers must not carry another body.
        self.claim_nonce(f"sign:{timestamp}:{given}", request.body, signed_at + SIGNATURE_WINDOW_SECONDS)
        self.payload = _json_object(request.body)

    def parse(self, request: HttpRequest) -> ParsedMessage | None:
        payload = self.payload
        if payload.get("msgtype") != "text":
            return None  # pictures, voice, files, rich text: acknowledged, not answered
        text = _dict(payload.get("text")).get("content")
        msg_id, conversation_id = payload.get("msgId"), payload.get("conversationId")
        sender = payload.get("senderStaffId") or payload.get("senderId")
        conversation_type = payload.get("conversationType")
        if not all(
            isinstance(v, str) and v for v in (text, msg_id, conversation_id, sender)
        ) or conversation_type not in ("1", "2"):
            logger.warning(
                "bot %s: DingTalk text message %r without the expected fields; ignored", self.bot.name, str(msg_id)[:64]
            )
            return None
        chat_type = ChatType.P2P if conversation_type == "1" else ChatType.GROUP
        # A one-to-one chat is always addressed to the robot.
        mentioned = chat_type == ChatType.P2P or payload.get("isInAtList") is True
        text = self._strip_mention(text)
        if not text:
            return None  # a bare @mention: nothing to answer
        return ParsedMessage(
            platform_message_id=msg_id,
            chat_id=conversation_id,
            chat_type=chat_type,
            sender_id=sender,
            text=text,
            mentioned=mentioned,
            reply_context=self._reply_context(payload),
            # The sessionWebhook lets anyone post into the chat until it expires: it is
            # kept once, in the reply context, not twice.
            raw={k: v for k, v in payload.items() if k != "sessionWebhook"},
        )

    def _strip_mention(self, text: str) -> str:
        """DingTalk usually removes the robot's own @Name from text.content; some clients
        leave it at the start. With extra bot_name set, that leading mention is dropped."""
        text = text.strip()
        bot_name = str(self.bot.extra.get("bot_name") or "").strip().lstrip("@")
        if bot_name:
            text = re.sub(rf"\A@{re.escape(bot_name)}(?:\s+|\Z)", "", text)
        return text

    def _reply_context(self, payload: dict) -> dict:
        context = {
            "conversation_type": payload["conversationType"],
            "open_conversation_id": payload["conversationId"],
            "staff_id": payload.get("senderStaffId") if isinstance(payload.get("senderStaffId"), str) else "",
            "robot_code": payload.get("robotCode") if isinstance(payload.get("robotCode"), str) else "",
        }
        webhook = payload.get("sessionWebhook")
        if webhook is None:
            return context
        if not isinstance(webhook, str) or not self._webhook_allowed(webhook):
            # The body is not signed: a sessionWebhook elsewhere would have us POST the
            # model's answer to any URL (an internal service, a metadata endpoint).
            raise MalformedRequest(f"sessionWebhook {str(webhook)[:80]!r} is not on a DingTalk host")
        expires = payload.get("sessionWebhookExpiredTime")
        if isinstance(expires, int) and not isinstance(expires, bool):
            context.update(session_webhook=webhook, session_webhook_expires_ms=expires)
        return context

    def _webhook_allowed(self, url: str) -> bool:
        """True for https URLs on *.dingtalk.com, and for the bot's own API base URL's
        scheme, host and port (an override such as a test server or an egress proxy)."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            return False
        if parsed.scheme == "https" and parsed.port is None and _DINGTALK_HOST.fullmatch(parsed.host):
            return True
        if not self.bot.api_base_url:
            return False
        base = httpx.URL(self.bot.api_base_url)
        return (parsed.scheme, parsed.host, parsed.port) == (base.scheme, base.host, base.port)

    # ack: the base class's empty 200. A JSON body would be sent as a synchronous reply.

    # -- outbound ----------------------------------------------------------------------

    def send(self, reply: OutboundReply, http: httpx.Client) -> None:
        context = reply.reply_context
        webhook = context.get("session_webhook")
        expires_ms = context.get("session_webhook_expires_ms") or 0
        if webhook and not self._webhook_allowed(webhook):
            # Stored before the bot's API base URL changed, or written by hand: never called.
            logger.warning(
                "bot %s: the stored sessionWebhook is not on a DingTalk host; replying through the robot API",
                self.bot.name,
            )
        elif webhook and time.time() * 1000 + SESSION_WEBHOOK_MARGIN_MS < expires_ms:
            if self._send_by_session(http, webhook, reply.text):
                return
        elif webhook:
            logger.info("bot %s: the sessionWebhook has expired; replying through the robot API", self.bot.name)
        self._send_by_robot_api(http, reply)

    def _send_by_session(self, http: httpx.Client, webhook: str, text: str) -> bool:
        """Post to the conversation's sessionWebhook. False if DingTalk refuses the webhook
        itself (expired early, revoked), so the robot API should be tried instead."""
        api = DingTalkApi(http, bot_name=self.bot.name)
        # A transport error is not retried through the robot API: the message may have arrived.
        response = api.request("POST", webhook, "sessionWebhook", json={"msgtype": "text", "text": {"content": text}})
        refused = api.session_refusal(response)
        if refused is None:
            return True
        logger.info(
            "bot %s: DingTalk refused the sessionWebhook (HTTP %s, errcode %s %s); replying through the robot API",
            self.bot.name,
            response.status_code,
            refused.get("errcode"),
            str(refused.get("errmsg", ""))[:200],
        )
        return False

    @property
    def _token_name(self) -> str:
        return f"dingtalk:{self.bot.uuid}"

    def _robot_code(self, context: dict) -> str:
        return str(self.bot.extra.get("robot_code") or context.get("robot_code") or self.bot.app_id)

    def _robot_request(self, reply: OutboundReply) -> tuple[str, dict]:
        context = reply.reply_context
        msg_param = json.dumps({"content": reply.text}, ensure_ascii=False)
        if len(msg_param.encode("utf-8")) > MSG_PARAM_MAX_BYTES:
            raise TransportError(
                f"the reply is {len(msg_param.encode())} bytes as msgParam; DingTalk takes {MSG_PARAM_MAX_BYTES}",
                permanent=True,
            )
        body = {"robotCode": self._robot_code(context), "msgKey": TEXT_MSG_KEY, "msgParam": msg_param}
        if context.get("conversation_type", "1" if reply.chat_type == ChatType.P2P else "2") == "2":
            conversation = context.get("open_conversation_id") or reply.chat_id
            if not conversation:
                raise TransportError("a group reply without the group's openConversationId", permanent=True)
            return GROUP_PATH, {**body, "openConversationId": conversation}
        staff_id = context.get("staff_id")
        if not staff_id:
            # senderStaffId is only given for members of the robot's own organisation.
            raise TransportError(
                "the sessionWebhook has expired and the sender has no staffId "
                "(not a member of this organisation), so the robot API cannot reach them",
                permanent=True,
            )
        return ONE_TO_ONE_PATH, {**body, "userIds": [staff_id]}

    def _send_by_robot_api(self, http: httpx.Client, reply: OutboundReply) -> None:
        path, body = self._robot_request(reply)
        api = DingTalkApi(http, self.api_base, bot_name=self.bot.name)
        response = api.send_with_token(
            self._token_name,
            lambda: self._fetch_token(api),
            lambda token: api.request(
                "POST", path, "robot send", json=body, headers={"x-acs-dingtalk-access-token": token}
            ),
            lambda response: "HTTP 401" if response.status_code == 401 else None,
        )
        data = api.check(response, "robot send")
        if path == ONE_TO_ONE_PATH:
            staff_id = body["userIds"][0]
            if staff_id in (data.get("flowControlledStaffIdList") or []):
                raise TransportError(f"DingTalk rate-limited the message to {staff_id!r} (flow control)")
            if staff_id in (data.get("invalidStaffIdList") or []):
                raise TransportError(
                    f"DingTalk does not know the staffId {staff_id!r}, or the user cannot "
                    "receive messages from this robot",
                    permanent=True,
                )

    def _fetch_token(self, api: DingTalkApi) -> tuple[str, int]:
        credentials = {"appKey": self.bot.app_id, "appSecret": str(self.bot.app_secret)}
        data = api.check(api.request("POST", AUTH_PATH, "accessToken", json=credentials), "accessToken")
        token, expire_in = data.get("accessToken"), data.get("expireIn")
        if not isinstance(token, str) or not token or not isinstance(expire_in, int):
            raise TransportError("DingTalk's accessToken answer has no accessToken / expireIn")
        return token, expire_in
