"""The DingTalk kit of the shared contract tests (channels_app/tests/test_contract.py).
DingTalk has no URL verification: a robot's callback URL is saved without one."""

from __future__ import annotations

import json
import time
from dataclasses import replace

from bots.models import Bot
from channels_app.tests.contract import ContractKit, Request, flip, from_headers
from tests.fakes.dingtalk import FakeDingTalk, dingtalk_callback, dingtalk_message, dingtalk_sign
from tests.fakes.server import Fault

APP_KEY = "dingcontractappkey01"
APP_SECRET = "contract-dingtalk-app-secret"
CONVERSATION = "cidp2pContractConversation=="
STAFF_ID = "manager4220"


class DingTalkKit(ContractKit):
    platform = "dingtalk"
    uses_timestamp_window = False  # the signature's own hour
    # The conversation's sessionWebhook first, the robot API where DingTalk refuses it.
    send_path = r"/robot/"
    token_path = r"/v1\.0/oauth2/accessToken"

    def fake_api(self) -> FakeDingTalk:
        fake = FakeDingTalk()
        fake.add_app(APP_KEY, APP_SECRET)
        return fake

    def make_bot(self, fake_api_url: str) -> Bot:
        return Bot.objects.create(
            name="contract-dingtalk",
            platform="dingtalk",
            app_id=APP_KEY,
            app_secret=APP_SECRET,
            extra={},
            api_base_url=fake_api_url,
        )

    def text_message(
        self, bot: Bot, msg_id: str, text: str, delivery: int = 1, signed_at: int | None = None
    ) -> Request:
        # DingTalk signs the millisecond timestamp: a re-delivery carries a later one.
        timestamp = signed_at * 1000 if signed_at is not None else int(time.time() * 1000) - 10_000 + delivery
        return from_headers(
            "POST", bot.callback_path, *dingtalk_callback(self._message(msg_id, text), APP_SECRET, timestamp)
        )

    def reuse_nonce(self, bot: Bot, request: Request, msg_id: str, text: str) -> Request:
        # The sign covers only the timestamp: captured headers can carry any body.
        return replace(request, body=json.dumps(self._message(msg_id, text)).encode())

    def _message(self, msg_id: str, text: str) -> dict:
        # The callback carries a sessionWebhook the fake issued (on the bot's API base).
        assert self.fake is not None, "DingTalkKit.text_message needs the running fake (kit.running())"
        return dingtalk_message(
            text,
            msg_id=f"msg{msg_id}",
            conversation_id=CONVERSATION,
            sender_staff_id=STAFF_ID,
            robot_code=APP_KEY,
            session=self.fake.open_session(CONVERSATION),
        )

    def message_payload(self, bot: Bot, msg_id: str, text: str) -> bytes:
        return json.dumps(self._message(msg_id, text), ensure_ascii=False).encode("utf-8")

    def deliver(self, bot: Bot, payload: bytes) -> Request:
        timestamp = str(int(time.time() * 1000))  # DingTalk signs only this, not the body
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "timestamp": timestamp,
            "sign": dingtalk_sign(timestamp, APP_SECRET),
        }
        return from_headers("POST", bot.callback_path, headers, payload)

    def platform_message_id(self, msg_id: str) -> str:
        return f"msg{msg_id}"

    def forge(self, request: Request) -> Request:
        return request.with_headers(sign=flip(request.headers["sign"]))

    def token_send_path(self) -> str:
        return r"/v1\.0/robot/"

    def token_dead(self) -> Fault:
        return Fault(401, {"code": "InvalidAuthentication", "message": "不合法的access_token"})

    def send_with_token(self, fake: FakeDingTalk) -> None:
        fake.expire_sessions()  # refused, so the reply goes through the robot API

    def sent_texts(self, fake: FakeDingTalk) -> list[str]:
        return [message["text"] for message in fake.sent]


KIT = DingTalkKit()
