"""The Feishu kit of the shared contract tests (channels_app/tests/test_contract.py)."""

from __future__ import annotations

import json

from bots.models import Bot
from channels_app.adapters.feishu import crypto
from channels_app.tests.contract import ContractKit, Handshake, Request, flip, from_headers
from tests.fakes.feishu import FakeFeishu, feishu_callback, feishu_event
from tests.fakes.server import Fault

APP_ID = "cli_contract_app"
APP_SECRET = "contract-app-secret"
VERIFICATION_TOKEN = "contract-verification-token"
ENCRYPT_KEY = "contract-encrypt-key"
SENDER = "ou_6a7b8c9d0e1f20314253647586970a1b"
CHALLENGE = "ajls384kdjx98XX"


class FeishuKit(ContractKit):
    platform = "feishu"
    send_path = r"/open-apis/im/v1/messages"
    token_path = r"/open-apis/auth/v3/tenant_access_token/internal"

    def fake_api(self) -> FakeFeishu:
        fake = FakeFeishu()
        fake.add_app(APP_ID, APP_SECRET)
        return fake

    def make_bot(self, fake_api_url: str) -> Bot:
        return Bot.objects.create(
            name="contract-feishu",
            platform="feishu",
            app_id=APP_ID,
            app_secret=APP_SECRET,
            token=VERIFICATION_TOKEN,
            encoding_aes_key=ENCRYPT_KEY,
            extra={},
            api_base_url=fake_api_url,
        )

    def platform_message_id(self, msg_id: str) -> str:
        return f"om_{msg_id}"

    def text_message(
        self, bot: Bot, msg_id: str, text: str, delivery: int = 1, signed_at: int | None = None
    ) -> Request:
        # A re-delivery repeats the event (its id), encrypted and signed anew with a new nonce.
        return from_headers(
            "POST", bot.callback_path, *feishu_callback(self._event(msg_id, text), ENCRYPT_KEY, signed_at)
        )

    def reuse_nonce(self, bot: Bot, request: Request, msg_id: str, text: str) -> Request:
        headers = request.headers
        return from_headers(
            "POST",
            bot.callback_path,
            *feishu_callback(
                self._event(msg_id, text),
                ENCRYPT_KEY,
                headers["X-Lark-Request-Timestamp"],
                headers["X-Lark-Request-Nonce"],
            ),
        )

    def _event(self, msg_id: str, text: str) -> dict:
        event = feishu_event(
            APP_ID, VERIFICATION_TOKEN, self.platform_message_id(msg_id), "oc_p2pchat", "p2p", SENDER, text
        )
        event["header"]["event_id"] = f"ev_{msg_id}"
        return event

    def message_payload(self, bot: Bot, msg_id: str, text: str) -> bytes:
        return json.dumps(self._event(msg_id, text), ensure_ascii=False).encode("utf-8")

    def deliver(self, bot: Bot, payload: bytes) -> Request:
        # The body is {"encrypt": ...} around the payload, signed as feishu_callback signs it.
        encrypted = crypto.encrypt(payload.decode("utf-8", "replace"), ENCRYPT_KEY)
        headers, _ = feishu_callback({}, ENCRYPT_KEY)
        body = json.dumps({"encrypt": encrypted}).encode()
        timestamp, nonce = headers["X-Lark-Request-Timestamp"], headers["X-Lark-Request-Nonce"]
        headers["X-Lark-Signature"] = crypto.signature(timestamp, nonce, ENCRYPT_KEY, body)
        return from_headers("POST", bot.callback_path, headers, body)

    def forge(self, request: Request) -> Request:
        return request.with_headers(**{"X-Lark-Signature": flip(request.headers["X-Lark-Signature"])})

    def handshake(self, bot: Bot) -> Handshake:
        challenge = {"challenge": CHALLENGE, "token": VERIFICATION_TOKEN, "type": "url_verification"}

        def check(response) -> None:
            assert response["Content-Type"] == "application/json"
            assert response.json() == {"challenge": CHALLENGE}

        # With an Encrypt Key, Feishu sends the challenge encrypted.
        return Handshake(from_headers("POST", bot.callback_path, *feishu_callback(challenge, ENCRYPT_KEY)), 200, check)

    def token_dead(self) -> Fault:
        return Fault(400, {"code": 99991663, "msg": "Invalid access token for authorization"})

    def sent_texts(self, fake: FakeFeishu) -> list[str]:
        return [message["text"] for message in fake.sent if message["app_id"] == APP_ID]


KIT = FeishuKit()
