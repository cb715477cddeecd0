"""The generic webhook kit of the shared contract tests (channels_app/tests/test_contract.py):
an integrator's signed POST in, a signed reply out to its outbound_url. No handshake."""

from __future__ import annotations

import json
import secrets
import time

from bots.models import Bot
from channels_app.tests.contract import ContractKit, Request, flip, from_headers
from tests.fakes.webhook import REPLY_PATH, FakeWebhookReceiver, webhook_callback, webhook_message

SECRET = "contract-webhook-shared-secret"
CONVERSATION = "ticket-4711"
USER = "customer-1093"


class WebhookKit(ContractKit):
    platform = "webhook"
    send_path = REPLY_PATH  # the bot's outbound_url on the receiver
    no_token_reason = "the webhook signs each reply with the shared secret; there is no access token"
    own_timeout_reason = "the adapter sets its own timeout (OUTBOUND_TIMEOUT) on every request; test_webhook covers it"

    def fake_api(self) -> FakeWebhookReceiver:
        return FakeWebhookReceiver(secret=SECRET)

    def make_bot(self, fake_api_url: str) -> Bot:
        return Bot.objects.create(
            name="contract-webhook",
            platform="webhook",
            app_secret=SECRET,
            extra={"outbound_url": fake_api_url + REPLY_PATH},
        )

    def text_message(
        self, bot: Bot, msg_id: str, text: str, delivery: int = 1, signed_at: int | None = None
    ) -> Request:
        # The integrator's retry repeats the message, signed anew with its own timestamp.
        timestamp = signed_at if signed_at is not None else int(time.time()) - 10 + delivery
        message = webhook_message(msg_id, CONVERSATION, USER, text)
        return from_headers("POST", bot.callback_path, *webhook_callback(message, SECRET, timestamp))

    def message_payload(self, bot: Bot, msg_id: str, text: str) -> bytes:
        return json.dumps(webhook_message(msg_id, CONVERSATION, USER, text), ensure_ascii=False).encode("utf-8")

    def deliver(self, bot: Bot, payload: bytes) -> Request:
        # The signature is the replay check's nonce: a timestamp of its own keeps two
        # deliveries of one payload in a second apart.
        timestamp = int(time.time()) - secrets.randbelow(200)
        return from_headers("POST", bot.callback_path, *webhook_callback(payload, SECRET, timestamp))

    def forge(self, request: Request) -> Request:
        header = "X-Switchboard-Signature"
        return request.with_headers(**{header: flip(request.headers[header])})

    def sent_texts(self, fake: FakeWebhookReceiver) -> list[str]:
        return [reply["text"] for reply in fake.delivered if reply["conversation"] == CONVERSATION]


KIT = WebhookKit()
