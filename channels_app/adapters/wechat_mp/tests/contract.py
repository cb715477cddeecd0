"""The WeChat Official Account kit of the shared contract tests
(channels_app/tests/test_contract.py): safe mode (安全模式) with the customer-service API,
so replies go out through message/custom/send."""

from __future__ import annotations

from urllib.parse import urlencode

from bots.models import Bot
from channels_app.tests.contract import ContractKit, Handshake, Request, flip
from tests.fakes.server import Fault
from tests.fakes.wechat_mp import (
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    FakeWeChatMP,
    mp_encrypted_callback,
    mp_text_xml,
    mp_url_verification,
)

TOKEN = "kT9wQ2zR7pX4mN1bV6cY"
AES_KEY = "T4Dvpcb4hwjHTuKbb3Lq059isDNiyun3lAG4eYRFg+k"
OPENID = "oJ7Yt5Qm0sX2kP9aB3cD4eF6gH8i"
ECHO = "contract-echostr-7265"


class WeChatMPKit(ContractKit):
    platform = "wechat_mp"
    payload_format = "xml"
    send_path = r"/cgi-bin/message/custom/send"
    token_path = r"/cgi-bin/stable_token"

    def fake_api(self) -> FakeWeChatMP:
        return FakeWeChatMP()

    def make_bot(self, fake_api_url: str) -> Bot:
        return Bot.objects.create(
            name="contract-wechat-mp",
            platform="wechat_mp",
            app_id=DEFAULT_APP_ID,
            app_secret=DEFAULT_APP_SECRET,
            token=TOKEN,
            encoding_aes_key=AES_KEY,
            extra={"customer_service_api": True},
            api_base_url=fake_api_url,
        )

    def text_message(
        self, bot: Bot, msg_id: str, text: str, delivery: int = 1, signed_at: int | None = None
    ) -> Request:
        # Every delivery is encrypted anew under a fresh nonce.
        return self._post(bot, msg_id, text, signed_at, nonce=None)

    def reuse_nonce(self, bot: Bot, request: Request, msg_id: str, text: str) -> Request:
        return self._post(bot, msg_id, text, int(request.query["timestamp"]), request.query["nonce"])

    def message_payload(self, bot: Bot, msg_id: str, text: str) -> bytes:
        return mp_text_xml(OPENID, text, msg_id).encode("utf-8")

    def deliver(self, bot: Bot, payload: bytes) -> Request:
        query, body = mp_encrypted_callback(bot, payload.decode("utf-8", "replace"))
        return Request("POST", f"{bot.callback_path}?{query}", body, "text/xml")

    @staticmethod
    def _post(bot: Bot, msg_id: str, text: str, signed_at: int | None, nonce: str | None) -> Request:
        query, body = mp_encrypted_callback(bot, mp_text_xml(OPENID, text, msg_id), signed_at, nonce)
        return Request("POST", f"{bot.callback_path}?{query}", body, "text/xml")

    def forge(self, request: Request) -> Request:
        # msg_signature is what covers the ciphertext in safe mode.
        params = request.query
        params["msg_signature"] = flip(params["msg_signature"])
        return Request(
            request.method,
            f"{request.path.split('?')[0]}?{urlencode(params)}",
            request.body,
            request.content_type,
            request.headers,
        )

    def handshake(self, bot: Bot) -> Handshake:
        def check(response) -> None:
            assert response.content == ECHO.encode()  # bare: no quotes, JSON or newline
            assert response["Content-Type"] == "text/plain"

        return Handshake(Request("GET", f"{bot.callback_path}?{mp_url_verification(bot, ECHO)}"), 200, check)

    def token_dead(self) -> Fault:
        return Fault(200, {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"})

    def sent_texts(self, fake: FakeWeChatMP) -> list[str]:
        return [message["text"]["content"] for message in fake.sent if message.get("touser") == OPENID]


KIT = WeChatMPKit()
