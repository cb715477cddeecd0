"""The WeCom kit of the shared contract tests (channels_app/tests/test_contract.py)."""

from __future__ import annotations

from urllib.parse import urlencode

from bots.models import Bot
from channels_app.tests.contract import ContractKit, Handshake, Request, flip
from tests.fakes.server import Fault
from tests.fakes.wecom import (
    DEFAULT_CORP_ID,
    DEFAULT_CORP_SECRET,
    FakeWeCom,
    wecom_callback,
    wecom_text_xml,
    wecom_url_verification,
)

TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
AGENT_ID = 1000002
USER = "ZhangSan"
ECHO = "5927352381066411412"


class WeComKit(ContractKit):
    platform = "wecom"
    payload_format = "xml"
    send_path = r"/cgi-bin/message/send"
    token_path = r"/cgi-bin/gettoken"

    def fake_api(self) -> FakeWeCom:
        return FakeWeCom(agent_id=AGENT_ID)

    def make_bot(self, fake_api_url: str) -> Bot:
        return Bot.objects.create(
            name="contract-wecom",
            platform="wecom",
            app_id=DEFAULT_CORP_ID,
            app_secret=DEFAULT_CORP_SECRET,
            token=TOKEN,
            encoding_aes_key=AES_KEY,
            extra={"agent_id": AGENT_ID},
            api_base_url=fake_api_url,
        )

    def text_message(
        self, bot: Bot, msg_id: str, text: str, delivery: int = 1, signed_at: int | None = None
    ) -> Request:
        # Every delivery gets a fresh nonce from the builder.
        return self._post(bot, msg_id, text, signed_at, nonce=None)

    def reuse_nonce(self, bot: Bot, request: Request, msg_id: str, text: str) -> Request:
        return self._post(bot, msg_id, text, int(request.query["timestamp"]), request.query["nonce"])

    def message_payload(self, bot: Bot, msg_id: str, text: str) -> bytes:
        return wecom_text_xml(DEFAULT_CORP_ID, USER, text, msg_id, AGENT_ID).encode("utf-8")

    def deliver(self, bot: Bot, payload: bytes) -> Request:
        query, body = wecom_callback(bot, payload.decode("utf-8", "replace"))
        return Request("POST", f"{bot.callback_path}?{query}", body, "text/xml")

    @staticmethod
    def _post(bot: Bot, msg_id: str, text: str, signed_at: int | None, nonce: str | None) -> Request:
        query, body = wecom_callback(
            bot, wecom_text_xml(DEFAULT_CORP_ID, USER, text, msg_id, AGENT_ID), signed_at, nonce
        )
        return Request("POST", f"{bot.callback_path}?{query}", body, "text/xml")

    def forge(self, request: Request) -> Request:
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
            assert response.content == ECHO.encode()  # bare text, nothing around it
            assert response["Content-Type"] == "text/plain"

        return Handshake(Request("GET", f"{bot.callback_path}?{wecom_url_verification(bot, ECHO)}"), 200, check)

    def token_dead(self) -> Fault:
        return Fault(200, {"errcode": 42001, "errmsg": "access_token expired"})

    def sent_texts(self, fake: FakeWeCom) -> list[str]:
        return [message["text"]["content"] for message in fake.sent if message.get("touser") == USER]


KIT = WeComKit()
