"""Point a Telegram bot's webhook at Switchboard (setWebhook), or remove it (--delete).

Telegram has no console page for webhooks: the Bot API call is the only way, and the
secret token it echoes in every update is chosen here, so this command sets both sides.
"""

from __future__ import annotations

import secrets

import httpx
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import URLValidator

from bots.models import Bot
from channels_app.adapters.telegram.adapter import SECRET_TOKEN, TelegramAdapter
from channels_app.errors import TransportError

# The ports setWebhook accepts.
WEBHOOK_PORTS = (443, 80, 88, 8443)


class Command(BaseCommand):
    help = (
        "Set a Telegram bot's webhook to <base URL>/callback/telegram/<bot uuid>/ with the bot's secret "
        "token (generated and saved if it has none), or remove it with --delete."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("bot_name", help="the Switchboard bot's name")
        parser.add_argument(
            "--base-url",
            metavar="URL",
            help="the public HTTPS origin Telegram can reach, e.g. https://bots.example.com",
        )
        parser.add_argument("--delete", action="store_true", help="remove the webhook instead (deleteWebhook)")
        parser.add_argument(
            "--drop-pending-updates",
            action="store_true",
            help="also discard the updates Telegram is still holding for the bot",
        )

    def handle(
        self, *args, bot_name: str, base_url: str | None, delete: bool, drop_pending_updates: bool, **options
    ) -> None:
        bot = Bot.objects.filter(name=bot_name, platform="telegram").first()
        if bot is None:
            raise CommandError(f"there is no Telegram bot named {bot_name!r} (names are case-sensitive).")
        adapter = TelegramAdapter(bot)
        if delete:
            answer = self._call(adapter, "deleteWebhook", {"drop_pending_updates": drop_pending_updates})
            self.stdout.write(f"{bot.name}: deleteWebhook: {answer.get('description') or 'ok'}")
            return
        url = _webhook_url(base_url, bot)
        generated = not bot.app_secret
        if generated:
            # Saved before the call: until Telegram has it, no update could pass anyway.
            bot.app_secret = secrets.token_urlsafe(32)
            bot.save(update_fields=["app_secret", "updated_at"])
        elif not SECRET_TOKEN.fullmatch(str(bot.app_secret)):
            raise CommandError(
                f"{bot.name}: the App secret is not a valid Telegram secret token (1-256 characters "
                "of A-Z, a-z, 0-9, _ and -); empty it and run this again to generate one."
            )
        answer = self._call(
            adapter,
            "setWebhook",
            {
                "url": url,
                "secret_token": str(bot.app_secret),
                "allowed_updates": ["message"],
                "drop_pending_updates": drop_pending_updates,
            },
        )
        self.stdout.write(f"{bot.name}: setWebhook {url}: {answer.get('description') or 'ok'}")
        if generated:
            self.stdout.write(f"{bot.name}: a new secret token was generated and saved as the bot's App secret.")

    @staticmethod
    def _call(adapter: TelegramAdapter, method: str, payload: dict) -> dict:
        with httpx.Client(timeout=httpx.Timeout(15.0, connect=5.0), follow_redirects=False) as http:
            try:
                return adapter.call(http, method, payload)
            except TransportError as exc:
                raise CommandError(f"{adapter.bot.name}: {exc}") from None


def _webhook_url(base_url: str | None, bot: Bot) -> str:
    if not base_url:
        raise CommandError(
            "--base-url is required (the public HTTPS origin of this Switchboard), unless you --delete the webhook."
        )
    try:
        URLValidator(schemes=["https"])(base_url)
        parsed = httpx.URL(base_url)
    except (ValidationError, httpx.InvalidURL):
        raise CommandError(
            f"--base-url {base_url!r} is not an https URL; Telegram calls webhooks over HTTPS "
            "only, e.g. https://bots.example.com"
        ) from None
    if (parsed.port or 443) not in WEBHOOK_PORTS or parsed.query or parsed.fragment:
        raise CommandError(
            f"--base-url {base_url!r}: Telegram calls webhooks only on ports "
            f"{', '.join(map(str, WEBHOOK_PORTS))}, and the URL may not have a query or fragment."
        )
    return base_url.rstrip("/") + bot.callback_path
