"""WeChat Official Account (公众号): XML callbacks in; replies out through the
customer-service API, or as the callback's own answer for accounts that may not use it.

Inbound: WeChat signs every callback with the Token. The URL check (GET) and plaintext
mode (明文模式) carry `signature` = SHA-1 over the sorted Token, timestamp and nonce; the
body is not signed. Compatible (兼容模式) and safe mode (安全模式) add `encrypt_type=aes`
and `msg_signature` over the ciphertext, which is AES-encrypted for the account's AppID
(the shared WXBizMsgCrypt scheme); we read only the decrypted copy, never the plaintext
fields compatible mode puts next to it. A bot with an EncodingAESKey refuses plaintext
callbacks, so nobody can downgrade it to unsigned bodies.

Replies. WeChat waits 5 s for the answer to a callback; when it gets none it drops the
connection and delivers the same message (same MsgId) again, 3 deliveries in all. An
empty body or "success" within 5 s means "no reply, do not retry"; after the last
delivery times out the user sees "该公众号暂时无法提供服务".

(a) `extra["customer_service_api"]` true (verified accounts): the callback is answered
    "success" at once and the task sends the model's reply with message/custom/send,
    within 48 h of the user's last message.
(b) Otherwise (passive mode; unverified subscription accounts cannot call that API): the
    reply can only travel in the HTTP response to one of the user's own messages. The
    task leaves it in a Redis outbox (passive.py) instead of calling WeChat, and the
    callback waits for it (reply_in_response), up to WECHAT_PASSIVE_WAIT_MS from its
    start, then answers with the passive reply XML (encrypted in safe mode). When the
    answer is not ready, a callback that is not WeChat's last delivery holds the
    connection past WeChat's 5 s (WECHAT_PASSIVE_HOLD_MS) and answers nothing, so that
    WeChat delivers again and the next delivery waits again. The last delivery answers
    in time with a short "still thinking, send any message" line, and the answer, when
    it comes, waits (a day) for the user's next message, whose reply carries it after a
    line naming the earlier question. One reply holds 2048 bytes: what does not fit
    waits for the next message, announced by "send any message for the rest". Nothing
    is cut and nothing is handed over twice (parts leave the outbox under a per-user
    lock). The row is `replied` once the task has produced the answer and put it in the
    outbox; `raw["passive"]` records when WeChat got it (`delivered_at`,
    `delivered_with`: the MsgId whose response carried it) or since when it waits for
    the user's next message (`waiting_since`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import Counter
from redis.exceptions import RedisError

from bots.models import Bot
from channels_app import outbox
from channels_app.adapters.wechat_mp.passive import (
    CONTINUED,
    PART_LIMIT_BYTES,
    SEPARATOR,
    STILL_THINKING,
    TEXT_LIMIT_BYTES,
    PassiveOutbox,
    QueuedPart,
    question_snippet,
)
from channels_app.base import Adapter
from channels_app.crypto import (
    signature_matches,
)
from channels_app.crypto.callback import TIMESTAMP, bot_crypt, decrypt_for_bot, query_params, xml_fields
from channels_app.errors import MalformedRequest, SignatureInvalid, TransportError
from channels_app.message import OutboundReply, ParsedMessage
from channels_app.models import MessageStatus
from channels_app.outbound import split_reply
from channels_app.platform_api import ErrorTable
from channels_app.registry import register
from channels_app.weixin_api import BUSY_ERRCODES, TOKEN_ERRCODES, WeixinApi
from routing.models import ChatType

logger = logging.getLogger("switchboard.adapters.wechat_mp")

PASSIVE_CALLBACKS = Counter(
    "switchboard_wechat_passive_total", "WeChat passive-mode callbacks by how they were answered", ["outcome"]
)

# WeChat delivers a message this many times in all when it gets no answer in 5 s.
WECHAT_DELIVERIES = 3
# After our hold ends, WeChat's next delivery of the message is due about now; the
# message stays "live" (its parts are not handed to other messages) this much longer.
LIVE_GRACE_SECONDS = 2.0

RETRYABLE_ERRCODES = BUSY_ERRCODES | {45011}  # and WeChat's limit of calls per minute
# What an admin should do about the errcodes a misconfigured bot gets most.
ERRCODE_HINTS = {
    40003: "the openid is not a follower of this account (a message meant for another account?)",
    40013: "the AppID (the bot's App ID) is wrong",
    40125: "the AppSecret is wrong: reset it under 设置与开发 → 基本配置 and paste it again",
    40164: "add this server's public IP to the account's IP whitelist (设置与开发 → 基本配置 → IP白名单)",
    43004: "the user no longer follows the account",
    45002: "the text is longer than WeChat's 2048 bytes",
    45015: "the user has not written to the account for more than 48 hours; customer-service messages "
    "only reach users within 48 h of their last message",
    45047: "more than 20 customer-service messages since the user's last message",
    48001: "this account may not use the customer-service API (unverified accounts cannot); "
    'set extra {"customer_service_api": false} to answer with passive replies',
}


class WeChatApi(WeixinApi):
    label = "WeChat"
    errors = ErrorTable(transient=RETRYABLE_ERRCODES, token_dead=TOKEN_ERRCODES, hints=ERRCODE_HINTS)


# XML 1.0 refuses these even inside CDATA; a model may still produce them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def url_signature(token: str, timestamp: str, nonce: str) -> str:
    """`signature` of the URL check and of plaintext callbacks: SHA-1 of the sorted
    Token, timestamp and nonce (no ciphertext)."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode("utf-8")).hexdigest()  # noqa: S324


def _cdata(text: str) -> str:
    # "]]>" would end the section early; split it across two sections instead.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def passive_text_xml(to_user: str, from_user: str, content: str, create_time: int) -> str:
    """A passive text reply: to the user's openid, from the account's original id."""
    return (
        f"<xml><ToUserName>{_cdata(to_user)}</ToUserName>"
        f"<FromUserName>{_cdata(from_user)}</FromUserName>"
        f"<CreateTime>{create_time}</CreateTime>"
        f"<MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{_cdata(_NOT_XML.sub('', content))}</Content></xml>"
    )


@dataclass(frozen=True)
class _RowState:
    failed: bool = False
    # Every part of the answer has been handed to WeChat (by this or another message).
    delivered: bool = False


@register
class WeChatMPAdapter(Adapter):
    platform = "wechat_mp"
    default_api_base = "https://api.weixin.qq.com"
    max_reply_length = TEXT_LIMIT_BYTES
    length_unit = "bytes"

    def __init__(self, bot: Bot) -> None:
        super().__init__(bot)
        self.customer_service = bot.extra.get("customer_service_api") is True
        if not self.customer_service:
            # Parts travel in passive replies, which also carry our own short lines.
            self.max_reply_length = PART_LIMIT_BYTES
        # A passive part is queued under its idempotency key, once; message/custom/send
        # takes no key, so a part sent there again may arrive twice.
        self.drops_repeated_sends = not self.customer_service
        self._started = time.monotonic()
        self._echo: str | None = None
        self._fields: dict[str, str] | None = None
        self._encrypted = False

    # -- inbound -----------------------------------------------------------------------

    @staticmethod
    def _require(params: dict[str, str], *names: str) -> None:
        missing = [name for name in names if not params.get(name)]
        if missing:
            raise MalformedRequest(f"query parameters missing: {', '.join(missing)}")
        if not TIMESTAMP.fullmatch(params["timestamp"]):
            raise MalformedRequest("timestamp is not a number of seconds")

    def _check_url_signature(self, params: dict[str, str]) -> None:
        expected = url_signature(str(self.bot.token), params["timestamp"], params["nonce"])
        # Compared as bytes: compare_digest refuses non-ASCII str, and this is the caller's.
        if not hmac.compare_digest(expected.encode("ascii"), params["signature"].encode("utf-8")):
            raise SignatureInvalid("signature does not match: the Token in WeChat and in Switchboard differ")

    def verify(self, request: HttpRequest) -> None:
        self._started = time.monotonic()
        params = query_params(request)
        if not str(self.bot.token):
            # With an empty Token anyone could compute the signature.
            raise SignatureInvalid("this bot has no callback Token configured")
        if request.method == "GET":
            self._require(params, "signature", "timestamp", "nonce", "echostr")
            self._check_url_signature(params)
            self.check_timestamp(int(params["timestamp"]))
            self._echo = params["echostr"]
            return

        encrypt_type = params.get("encrypt_type", "raw")
        if encrypt_type == "aes":
            self._require(params, "msg_signature", "timestamp", "nonce")
            encrypted = xml_fields(request.body, "request body").get("Encrypt", "")
            if not encrypted:
                raise MalformedRequest("request body has no Encrypt element")
            if not self.bot.app_id:
                raise SignatureInvalid("this bot has no AppID (App ID) configured")
            if not signature_matches(
                params["msg_signature"], str(self.bot.token), params["timestamp"], params["nonce"], encrypted
            ):
                raise SignatureInvalid("msg_signature does not match: the Token in WeChat and in Switchboard differ")
            valid_until = self.check_timestamp(int(params["timestamp"]))
            decrypted = decrypt_for_bot(self.bot, encrypted)
            self._fields = xml_fields(decrypted, "decrypted message")
            self._encrypted = True
            # The signature covers the ciphertext, not the plaintext fields compatible
            # mode puts next to it: the nonce stays with the message it encrypts.
            nonce_message, signed = decrypted, True
        elif encrypt_type == "raw":
            if str(self.bot.encoding_aes_key):
                raise SignatureInvalid(
                    "plaintext callback for a bot with an EncodingAESKey: it accepts only encrypted ones. Set "
                    "消息加解密方式 to 安全模式 (or 兼容模式) in WeChat, or clear the bot's EncodingAESKey"
                )
            self._require(params, "signature", "timestamp", "nonce")
            self._check_url_signature(params)
            valid_until = self.check_timestamp(int(params["timestamp"]))
            self._fields = xml_fields(request.body, "request body")
            nonce_message, signed = request.body, False  # plaintext mode signs no part of the body
        else:
            raise MalformedRequest(f"encrypt_type {encrypt_type[:20]!r} is neither aes nor raw")
        if self._fields.get("MsgType") == "text":
            missing = [name for name in ("MsgId", "FromUserName", "ToUserName") if not self._fields.get(name)]
            if missing:
                raise MalformedRequest(f"text message without {', '.join(missing)}")
        # Claimed last, so a request refused for another reason never holds the nonce.
        # WeChat delivers a timed-out request again unchanged (passive mode relies on it):
        # the same body under the same nonce passes, as a duplicate MsgId (recorded once,
        # waited for at most WECHAT_DELIVERIES times); a captured plaintext-mode query
        # with a forged body is refused.
        self.claim_nonce(params["nonce"], nonce_message, valid_until, signature_covers_message=signed)

    def handshake(self, request: HttpRequest) -> HttpResponse | None:
        if self._echo is None:
            return None
        # The echostr unchanged and bare: no quotes, JSON or newline.
        return HttpResponse(self._echo.encode("utf-8"), content_type="text/plain")

    def parse(self, request: HttpRequest) -> ParsedMessage | None:
        fields = self._fields
        if fields is None:
            raise MalformedRequest("nothing was read from this request")
        if fields.get("MsgType") != "text":
            # Events (subscribe, menu clicks, …) and media: acknowledged so WeChat stops
            # re-delivering them, and not answered.
            return None
        openid, text = fields["FromUserName"], fields.get("Content", "")
        return ParsedMessage(
            platform_message_id=fields["MsgId"],
            # An account's conversation is always one user with the account.
            chat_id=openid,
            chat_type=ChatType.P2P,
            sender_id=openid,
            text=text,
            mentioned=True,
            reply_context={"openid": openid, "msgid": fields["MsgId"], "question": question_snippet(text)},
            raw=fields,
        )

    def ack(self, request: HttpRequest, message: ParsedMessage | None) -> HttpResponse:
        # "success": WeChat neither retries nor tells the user the account is down.
        return HttpResponse(b"success", content_type="text/plain")

    # -- passive replies -----------------------------------------------------------------

    def reply_in_response(self, request: HttpRequest, message: ParsedMessage) -> HttpResponse | None:
        if self.customer_service:
            return None
        try:
            return self._answer_passively(request, message)
        except RedisError as exc:
            # The row is recorded; the answer waits in the outbox (or the task retries)
            # and the user's next message carries it.
            PASSIVE_CALLBACKS.labels("redis_error").inc()
            logger.warning("passive reply for %s unavailable, answering success: %s", self.bot.name, exc)
            return self.ack(request, message)

    def _answer_passively(self, request: HttpRequest, message: ParsedMessage) -> HttpResponse:
        msgid, openid = message.platform_message_id, message.sender_id
        outbox = PassiveOutbox(self.bot.uuid)
        delivery = outbox.count_delivery(msgid)
        earlier = outbox.answered(msgid)
        if earlier is not None:
            # We answered this MsgId already, yet WeChat delivers it again: it did not
            # get that answer. The same text again (WeChat shows one of them at most).
            PASSIVE_CALLBACKS.labels("repeated").inc()
            return self._passive_response(earlier)
        if delivery > WECHAT_DELIVERIES:
            # Not WeChat (it stops after three): a replay must not hold a worker again.
            PASSIVE_CALLBACKS.labels("over_deliveries").inc()
            return self.ack(request, message)

        wait_until = self._started + settings.WECHAT_PASSIVE_WAIT_MS / 1000
        hold_until = self._started + settings.WECHAT_PASSIVE_HOLD_MS / 1000
        outbox.mark_live(msgid, hold_until - time.monotonic() + LIVE_GRACE_SECONDS)
        state = self._row_state(msgid)
        taken = None
        if not (state.failed or state.delivered):
            while (taken := outbox.take(openid, msgid, require_own=True)) is None:
                if not outbox.wait_ready(msgid, wait_until):
                    break
            if taken is None:
                state = self._row_state(msgid)
        if taken is None and not (delivery == WECHAT_DELIVERIES or state.failed or state.delivered):
            # Not ready, and WeChat will deliver again: let its 5 s run out (an answer
            # in time, even an empty one, would end its retries). Nothing is taken now:
            # WeChat no longer listens.
            PASSIVE_CALLBACKS.labels("held").inc()
            time.sleep(max(hold_until - time.monotonic(), 0))
            return HttpResponse(b"", content_type="text/plain")

        # This callback answers in time, so WeChat will not deliver msgid again: from now
        # on its parts are orphans, for the user's next message.
        outbox.end_live(msgid)
        still_thinking = False
        if taken is None:
            # WeChat's last delivery: answer in time with what earlier messages left,
            # and say that the answer follows.
            taken = outbox.take(openid, msgid, require_own=False)
            own_taken = taken is not None and any(part.msgid == msgid for part in taken.parts)
            still_thinking = not (state.failed or state.delivered or own_taken)
            if still_thinking:
                self._note_waiting(msgid)
            elif taken is None:
                PASSIVE_CALLBACKS.labels("nothing").inc()
                return self.ack(request, message)

        content, more = (taken.content, taken.more_waiting) if taken is not None else ("", False)
        if taken is not None:
            for part_msgid in dict.fromkeys(part.msgid for part in taken.parts):
                count = sum(1 for part in taken.parts if part.msgid == part_msgid)
                more = self._note_delivery(part_msgid, count, msgid) or more
        if still_thinking:
            content = f"{content}{SEPARATOR}{STILL_THINKING}" if content else STILL_THINKING
        elif more:
            content += CONTINUED
        outbox.remember_answer(msgid, content)
        PASSIVE_CALLBACKS.labels("still_thinking" if still_thinking else "answered").inc()
        return self._passive_response(content)

    def _row_state(self, msgid: str) -> _RowState:
        row = outbox.passive_state(self.bot, msgid)
        if row is None:
            return _RowState()
        if row["status"] == MessageStatus.FAILED:
            return _RowState(failed=True)
        delivered = (row["raw"] or {}).get("passive", {}).get("parts_delivered", 0)
        expected = self._expected_parts(row["reply_text"])
        return _RowState(delivered=row["status"] == MessageStatus.REPLIED and 0 < expected <= delivered)

    def _expected_parts(self, reply_text: str) -> int:
        # The parts the task makes of the reply (channels_app.tasks.handle_message).
        return sum(1 for part in split_reply(reply_text, self.max_reply_length, self.length_unit) if part.strip())

    def _note_delivery(self, msgid: str, count: int, delivered_with: str) -> bool:
        """Record on msgid's row that `count` of its parts went to WeChat in the answer to
        delivered_with; True if parts of it are still to come."""
        noted = outbox.note_passive_delivery(self.bot, msgid, count, delivered_with)
        if noted is None:
            return False
        delivered, reply_text = noted
        return delivered < self._expected_parts(reply_text)

    def _note_waiting(self, msgid: str) -> None:
        outbox.note_passive_waiting(self.bot, msgid)

    def seal_reply(self, xml: str, timestamp: str, nonce: str, random16: bytes | None = None) -> str:
        """The encrypted envelope of a passive reply (safe and compatible mode)."""
        return bot_crypt(self.bot).reply_envelope(str(self.bot.token), xml, timestamp, nonce, random16)

    def _passive_response(self, content: str) -> HttpResponse:
        fields = self._fields or {}
        now = int(time.time())
        xml = passive_text_xml(fields.get("FromUserName", ""), fields.get("ToUserName", ""), content, now)
        if self._encrypted:
            xml = self.seal_reply(xml, str(now), str(secrets.randbelow(10**10)))
        return HttpResponse(xml.encode("utf-8"), content_type="text/xml; charset=utf-8")

    # -- outbound ----------------------------------------------------------------------

    def send(self, reply: OutboundReply, http: httpx.Client) -> None:
        if not self.customer_service:
            self._leave_for_callback(reply)
            return
        openid = reply.reply_context.get("openid") or reply.chat_id
        payload = {"touser": openid, "msgtype": "text", "text": {"content": reply.text}}
        api = WeChatApi(http, self.api_base, bot_name=self.bot.name)
        api.post_with_token(
            self._token_name,
            lambda: self._fetch_token(api),
            "/cgi-bin/message/custom/send",
            "message/custom/send",
            payload,
        )

    def _leave_for_callback(self, reply: OutboundReply) -> None:
        msgid = reply.reply_context.get("msgid")
        openid = reply.reply_context.get("openid") or reply.chat_id
        if not msgid or not openid:
            raise TransportError("this message has no MsgId/openid to answer passively", permanent=True)
        part = QueuedPart(
            id=reply.idempotency_key,
            msgid=str(msgid),
            text=reply.text,
            question=str(reply.reply_context.get("question", "")),
        )
        PassiveOutbox(self.bot.uuid).put(str(openid), part)

    @property
    def _token_name(self) -> str:
        return f"wechat_mp:{self.bot.uuid}"

    def _fetch_token(self, api: WeChatApi) -> tuple[str, int]:
        # stable_token, not cgi-bin/token: it does not invalidate the token another tool
        # of the same account holds, and the AppSecret travels in the body, not the URL.
        credentials = {
            "grant_type": "client_credential",
            "appid": str(self.bot.app_id),
            "secret": str(self.bot.app_secret),
        }
        data = api.call("POST", "/cgi-bin/stable_token", "stable_token", errcode_required=False, json=credentials)
        return api.token_from("stable_token", data)
