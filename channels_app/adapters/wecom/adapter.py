"""WeCom (企业微信) self-built app: encrypted XML callbacks in, message/send out.

Inbound: every callback is signed (msg_signature over Token, timestamp, nonce and the
ciphertext) and AES-encrypted for the CorpID. A GET is the URL verification the admin
console sends on "save"; a POST carries one message or event. WeCom treats an empty
200 as "no passive reply", which is what we answer: the reply goes out later through
the send API, because the model rarely answers within WeCom's 5 s.

Outbound: an access token from gettoken (cached in Redis for every worker), then
message/send with the app's AgentId.
"""

from __future__ import annotations

import logging

import httpx
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from bots.models import Bot
from channels_app.base import Adapter
from channels_app.crypto import (
    signature_matches,
)
from channels_app.crypto.callback import TIMESTAMP, decrypt_for_bot, query_params, xml_fields
from channels_app.errors import MalformedRequest, SignatureInvalid, TransportError
from channels_app.message import OutboundReply, ParsedMessage
from channels_app.platform_api import ErrorTable
from channels_app.registry import register
from channels_app.weixin_api import BUSY_ERRCODES, TOKEN_ERRCODES, WeixinApi
from routing.models import ChatType

logger = logging.getLogger("switchboard.adapters.wecom")

RETRYABLE_ERRCODES = BUSY_ERRCODES | {45033}  # and WeCom's own limit on concurrent calls
# What an admin should do about the errcodes a misconfigured bot gets most.
ERRCODE_HINTS = {
    40001: "the Secret is wrong (use this app's Secret, not another app's)",
    40013: "the CorpID (the bot's App ID) is wrong",
    40056: "the AgentId in the bot's extra {\"agent_id\": N} is not this app's",
    45002: "the text is longer than WeCom's 2048 bytes",
    48002: "the app lacks permission for this API",
    60020: "add this server's public IP to the app's 企业可信IP list in the WeCom admin console",
    81013: "the user is not in the app's visible range (可见范围)",
}


class WeComApi(WeixinApi):
    label = "WeCom"
    errors = ErrorTable(transient=RETRYABLE_ERRCODES, token_dead=TOKEN_ERRCODES, hints=ERRCODE_HINTS)


@register
class WeComAdapter(Adapter):
    platform = "wecom"
    default_api_base = "https://qyapi.weixin.qq.com"
    max_reply_length = 2048
    length_unit = "bytes"

    def __init__(self, bot: Bot) -> None:
        super().__init__(bot)
        # message/send with enable_duplicate_check drops a request identical to one sent
        # within duplicate_check_interval (WECOM_DUPLICATE_CHECK_INTERVAL; 0: no check).
        self.drops_repeated_sends = settings.WECOM_DUPLICATE_CHECK_INTERVAL > 0
        self._echo: str | None = None
        self._plaintext: str | None = None

    # -- inbound -----------------------------------------------------------------------

    def _check_signature(self, params: dict[str, str], signed_value: str) -> None:
        token = str(self.bot.token)
        if not token:
            raise SignatureInvalid("this bot has no callback Token configured")
        if not self.bot.app_id:
            raise SignatureInvalid("this bot has no CorpID (App ID) configured")
        if not signature_matches(params["msg_signature"], token, params["timestamp"], params["nonce"], signed_value):
            raise SignatureInvalid("msg_signature does not match: the Token in WeCom and in Switchboard differ")

    @staticmethod
    def _require(params: dict[str, str], *names: str) -> None:
        missing = [name for name in names if not params.get(name)]
        if missing:
            raise MalformedRequest(f"query parameters missing: {', '.join(missing)}")
        # ASCII digits only, and few of them: int() of a huge digit string is slow or
        # raises, and no real clock needs more than 12 digits of seconds.
        if not TIMESTAMP.fullmatch(params["timestamp"]):
            raise MalformedRequest("timestamp is not a number of seconds")

    def verify(self, request: HttpRequest) -> None:
        params = query_params(request)
        if request.method == "GET":
            self._require(params, "msg_signature", "timestamp", "nonce", "echostr")
            self._check_signature(params, params["echostr"])
            self.check_timestamp(int(params["timestamp"]))
            self._echo = decrypt_for_bot(self.bot, params["echostr"])
            return

        self._require(params, "msg_signature", "timestamp", "nonce")
        envelope = xml_fields(request.body, "request body")
        encrypted = envelope.get("Encrypt", "")
        if not encrypted:
            raise MalformedRequest("request body has no Encrypt element")
        self._check_signature(params, encrypted)
        valid_until = self.check_timestamp(int(params["timestamp"]))
        self._plaintext = decrypt_for_bot(self.bot, encrypted)
        # Claimed last, so a request refused for another reason never holds the nonce.
        # With the message, not its ciphertext: WeCom sends a late-answered request again
        # unchanged, and the same message encrypted anew would still be the same.
        self.claim_nonce(params["nonce"], self._plaintext, valid_until, signature_covers_message=True)

    def handshake(self, request: HttpRequest) -> HttpResponse | None:
        if self._echo is None:
            return None
        # Bare text, exactly the decrypted bytes: quotes, JSON or a newline fail the
        # verification in the WeCom console.
        return HttpResponse(self._echo.encode("utf-8"), content_type="text/plain")

    def parse(self, request: HttpRequest) -> ParsedMessage | None:
        if self._plaintext is None:
            raise MalformedRequest("nothing was decrypted for this request")
        fields = xml_fields(self._plaintext, "decrypted message")
        if fields.get("MsgType") != "text":
            # Events (enter_agent, subscribe, …) and media: acknowledged so WeCom stops
            # re-delivering them, and not answered.
            return None
        missing = [name for name in ("MsgId", "FromUserName") if not fields.get(name)]
        if missing:
            raise MalformedRequest(f"text message without {', '.join(missing)}")
        user = fields["FromUserName"]
        return ParsedMessage(
            platform_message_id=fields["MsgId"],
            # An app conversation is always one user with the app: the user is the chat.
            chat_id=user,
            chat_type=ChatType.P2P,
            sender_id=user,
            text=fields.get("Content", ""),
            mentioned=True,
            reply_context={"touser": user, "agent_id": fields.get("AgentID", "")},
            raw=fields,
        )

    # ack: the base class's empty 200 is WeCom's "no passive reply".

    # -- outbound ----------------------------------------------------------------------

    @property
    def _token_name(self) -> str:
        return f"wecom:{self.bot.uuid}"

    def _fetch_token(self, api: WeComApi) -> tuple[str, int]:
        credentials = {"corpid": str(self.bot.app_id), "corpsecret": str(self.bot.app_secret)}
        return api.token_from("gettoken", api.call("GET", "/cgi-bin/gettoken", "gettoken", params=credentials))

    def send(self, reply: OutboundReply, http: httpx.Client) -> None:
        agent_id = self.bot.extra.get("agent_id")
        if not isinstance(agent_id, int) or isinstance(agent_id, bool):
            raise TransportError('this bot has no AgentId: set extra {"agent_id": N}', permanent=True)
        touser = reply.reply_context.get("touser") or reply.chat_id
        payload = {"touser": touser, "msgtype": "text", "agentid": agent_id, "text": {"content": reply.text}}
        if self.drops_repeated_sends and not reply.resend:
            # WeCom drops a request identical to one it took within the interval: a part
            # sent again after a worker died during its send reaches the user once. The
            # price: the same text to the same user within the interval shows once. Not
            # for the console's deliberate re-send, which WeCom would drop the same way.
            payload["enable_duplicate_check"] = 1
            payload["duplicate_check_interval"] = settings.WECOM_DUPLICATE_CHECK_INTERVAL

        api = WeComApi(http, self.api_base, bot_name=self.bot.name)
        data = api.post_with_token(
            self._token_name, lambda: self._fetch_token(api), "/cgi-bin/message/send", "message/send", payload
        )
        invalid = {user for user in str(data.get("invaliduser") or "").split("|") if user}
        if touser in invalid:
            # errcode 0, yet nobody got it: WeCom lists users it skipped.
            raise TransportError(f"WeCom did not deliver to {touser!r}: {ERRCODE_HINTS[81013]}", permanent=True)
