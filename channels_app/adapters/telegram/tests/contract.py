"""The Telegram kit of the shared contract tests (channels_app/tests/test_contract.py).
Telegram has no handshake: setWebhook registers the URL and its secret_token."""

from __future__ import annotations

import json

from bots.models import Bot
from channels_app.tests.contract import ContractKit, Request, flip, from_headers
from tests.fakes.server import Fault
from tests.fakes.telegram import FakeTelegram, telegram_callback, telegram_update

TOKEN = "7000000042:AAContractContractContractContract00"
USERNAME = "contract_switchboard_bot"
SECRET = "contract-webhook-secret_42"
CHAT_ID = 222222222


class TelegramKit(ContractKit):
    platform = "telegram"
    # No nonce, no timestamp: Telegram's repeat of an update is byte for byte the same.
    claims_nonces = False
    uses_timestamp_window = False
    send_path = r"/sendMessage"
    no_token_reason = "Telegram's bot token from BotFather does not expire; Switchboard fetches none"
    no_retry_after_date_reason = "Telegram names seconds in the answer (parameters.retry_after), never a date"

    def fake_api(self) -> FakeTelegram:
        fake = FakeTelegram()
        fake.add_bot(TOKEN, USERNAME)
        return fake

    def make_bot(self, fake_api_url: str) -> Bot:
        return Bot.objects.create(
            name="contract-telegram",
            platform="telegram",
            token=TOKEN,
            app_secret=SECRET,
            extra={"bot_username": USERNAME},
            api_base_url=fake_api_url,
        )

    @staticmethod
    def _message_id(msg_id: str) -> int:
        return int(msg_id) % 10**9

    def platform_message_id(self, msg_id: str) -> str:
        return f"{CHAT_ID}:{self._message_id(msg_id)}"

    def _update(self, msg_id: str, text: str) -> dict:
        return telegram_update(
            text,
            chat_id=CHAT_ID,
            user_id=CHAT_ID,
            message_id=self._message_id(msg_id),
            update_id=self._message_id(msg_id),
        )

    def text_message(
        self, bot: Bot, msg_id: str, text: str, delivery: int = 1, signed_at: int | None = None
    ) -> Request:
        # Telegram re-delivers the very same update (same update_id) until it gets a 2xx.
        return from_headers("POST", bot.callback_path, *telegram_callback(self._update(msg_id, text), SECRET))

    def message_payload(self, bot: Bot, msg_id: str, text: str) -> bytes:
        return json.dumps(self._update(msg_id, text), ensure_ascii=False).encode("utf-8")

    def deliver(self, bot: Bot, payload: bytes) -> Request:
        headers, _ = telegram_callback({}, SECRET)  # the secret header; the body is not signed
        return from_headers("POST", bot.callback_path, headers, payload)

    def forge(self, request: Request) -> Request:
        header = "X-Telegram-Bot-Api-Secret-Token"
        return request.with_headers(**{header: flip(request.headers[header])})

    def rate_limited(self, retry_after: str) -> Fault:
        description = f"Too Many Requests: retry after {retry_after}"
        return Fault(
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": description,
                "parameters": {"retry_after": int(retry_after)},
            },
        )

    def sent_texts(self, fake: FakeTelegram) -> list[str]:
        return [message["text"] for message in fake.sent if message["chat_id"] == CHAT_ID]


KIT = TelegramKit()
