"""The Slack kit of the shared contract tests (channels_app/tests/test_contract.py): a
direct message (message.im) through the Events API, answered with chat.postMessage."""

from __future__ import annotations

import json
import secrets
import time

from bots.models import Bot
from channels_app.tests.contract import ContractKit, Handshake, Request, flip, from_headers
from tests.fakes.slack import FakeSlack, slack_callback, slack_event

SIGNING_SECRET = "contract-slack-signing-secret"
BOT_TOKEN = "xoxb-contract-token"
CHANNEL = "D0CONTRACT1"
USER = "U0CONTRACT1"
CHALLENGE = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"


class SlackKit(ContractKit):
    platform = "slack"
    send_path = r"/api/chat\.postMessage"
    no_token_reason = "Slack's bot token (xoxb-) does not expire; Switchboard fetches none"

    def fake_api(self) -> FakeSlack:
        fake = FakeSlack()
        fake.add_token(BOT_TOKEN)
        return fake

    def make_bot(self, fake_api_url: str) -> Bot:
        return Bot.objects.create(
            name="contract-slack",
            platform="slack",
            app_secret=SIGNING_SECRET,
            token=BOT_TOKEN,
            extra={},
            api_base_url=fake_api_url,
        )

    @staticmethod
    def _ts(msg_id: str) -> str:
        return f"1700000000.{int(msg_id) % 10**6:06d}"

    def platform_message_id(self, msg_id: str) -> str:
        return f"{CHANNEL}:{self._ts(msg_id)}"

    def _event(self, msg_id: str, text: str) -> dict:
        return slack_event(
            "message", CHANNEL, USER, text, ts=self._ts(msg_id), channel_type="im", event_id=f"Ev{msg_id}"
        )

    def text_message(
        self, bot: Bot, msg_id: str, text: str, delivery: int = 1, signed_at: int | None = None
    ) -> Request:
        # Slack's retry repeats the event, signed anew with its own timestamp.
        timestamp = signed_at if signed_at is not None else int(time.time()) - 10 + delivery
        retry = delivery - 1 if delivery > 1 else None
        return from_headers(
            "POST", bot.callback_path, *slack_callback(self._event(msg_id, text), SIGNING_SECRET, timestamp, retry)
        )

    def message_payload(self, bot: Bot, msg_id: str, text: str) -> bytes:
        return json.dumps(self._event(msg_id, text)).encode()

    def deliver(self, bot: Bot, payload: bytes) -> Request:
        # The signature is the replay check's nonce: a timestamp of its own keeps two
        # deliveries of one payload in a second apart.
        timestamp = int(time.time()) - secrets.randbelow(200)
        return from_headers("POST", bot.callback_path, *slack_callback(payload, SIGNING_SECRET, timestamp))

    def forge(self, request: Request) -> Request:
        return request.with_headers(**{"X-Slack-Signature": flip(request.headers["X-Slack-Signature"])})

    def handshake(self, bot: Bot) -> Handshake:
        challenge = {"token": "fake-legacy-verification-token", "challenge": CHALLENGE, "type": "url_verification"}

        def check(response) -> None:
            assert response.json() == {"challenge": CHALLENGE}

        return Handshake(
            from_headers("POST", bot.callback_path, *slack_callback(challenge, SIGNING_SECRET)), 200, check
        )

    def sent_texts(self, fake: FakeSlack) -> list[str]:
        return [message["text"] for message in fake.sent if message["channel"] == CHANNEL]


KIT = SlackKit()
