"""manage.py telegram_set_webhook against the fake Bot API: both sides of the secret
token are set, and the webhook it sets is one the callback view accepts."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from bots.models import Bot
from channels_app.models import InboundMessage
from tests.fakes.telegram import FakeTelegram, telegram_callback, telegram_update

TOKEN = "7000000002:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
BASE = "https://bots.example.com"


@pytest.fixture
def telegram():
    with FakeTelegram() as fake:
        fake.add_bot(TOKEN, "switchboard_demo_bot")
        yield fake


@pytest.fixture
def make_telegram_bot(make_bot, telegram):
    def make(**fields) -> Bot:
        return make_bot(
            **{
                "name": "support",
                "platform": "telegram",
                "token": TOKEN,
                "app_secret": "",
                "api_base_url": telegram.url,
                "extra": {"bot_username": "switchboard_demo_bot"},
                **fields,
            }
        )

    return make


def run(*args: str) -> str:
    out = StringIO()
    call_command("telegram_set_webhook", *args, stdout=out)
    return out.getvalue()


def test_it_generates_and_saves_a_secret_and_sets_the_webhook(make_telegram_bot, telegram):
    bot = make_telegram_bot()
    out = run("support", "--base-url", f"{BASE}/")
    bot.refresh_from_db()
    secret = str(bot.app_secret)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,256}", secret)
    [request] = telegram.received(r"/setWebhook$")
    assert request.path == f"/bot{TOKEN}/setWebhook"
    assert request.json() == {
        "url": f"{BASE}/callback/telegram/{bot.uuid}/",
        "secret_token": secret,
        "allowed_updates": ["message"],
        "drop_pending_updates": False,
    }
    assert f"support: setWebhook {BASE}/callback/telegram/{bot.uuid}/: Webhook was set" in out
    assert "new secret token was generated" in out
    assert secret not in out and TOKEN not in out


def test_the_webhook_it_sets_is_accepted_by_the_callback(client, make_telegram_bot, telegram):
    bot = make_telegram_bot()
    run("support", "--base-url", BASE)
    secret = telegram.webhooks[TOKEN]["secret_token"]
    response = client.post(
        bot.callback_path,
        data=telegram_callback(telegram_update("hi"), secret)[1],
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": secret},
    )
    assert response.status_code == 200
    assert InboundMessage.objects.get(bot=bot).text == "hi"


def test_an_existing_secret_is_kept(make_telegram_bot, telegram):
    make_telegram_bot(app_secret="already_set-secret")
    out = run("support", "--base-url", BASE, "--drop-pending-updates")
    body = telegram.received(r"/setWebhook$")[0].json()
    assert (body["secret_token"], body["drop_pending_updates"]) == ("already_set-secret", True)
    assert "generated" not in out
    assert str(Bot.objects.get(name="support").app_secret) == "already_set-secret"


def test_a_secret_telegram_would_refuse_is_reported_not_sent(make_telegram_bot, telegram):
    make_telegram_bot(app_secret="has spaces and ünïcode")
    with pytest.raises(CommandError, match="not a valid Telegram secret token"):
        run("support", "--base-url", BASE)
    assert telegram.requests == []


def test_delete_removes_the_webhook(make_telegram_bot, telegram):
    make_telegram_bot(app_secret="already_set-secret")
    run("support", "--base-url", BASE)
    out = run("support", "--delete")
    [request] = telegram.received(r"/deleteWebhook$")
    assert request.json() == {"drop_pending_updates": False}
    assert telegram.webhooks[TOKEN] == {}
    assert "support: deleteWebhook: Webhook was deleted" in out


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        (None, "--base-url is required"),
        ("http://bots.example.com", "not an https URL"),
        ("bots.example.com", "not an https URL"),
        ("https://bots.example.com:8080", "only on ports 443, 80, 88, 8443"),
        ("https://bots.example.com/?x=1", "query or fragment"),
    ],
)
def test_a_base_url_telegram_cannot_call_is_refused(make_telegram_bot, telegram, base_url, message):
    bot = make_telegram_bot()
    with pytest.raises(CommandError, match=re.escape(message)):
        run("support", *(["--base-url", base_url] if base_url else []))
    assert telegram.requests == []
    bot.refresh_from_db()
    assert str(bot.app_secret) == ""  # nothing generated for a call that was not made


def test_an_unknown_bot_or_a_bot_of_another_platform_is_refused(make_bot, db):
    make_bot(name="wecom-bot", platform="wecom")
    for name in ("nobody", "wecom-bot"):
        with pytest.raises(CommandError, match=f"no Telegram bot named '{name}'"):
            run(name, "--base-url", BASE)


def test_telegrams_refusal_is_reported_without_the_token(make_telegram_bot, telegram):
    other = "7000000003:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsXX"
    make_telegram_bot(token=other, app_secret="already_set-secret")
    with pytest.raises(CommandError) as error:
        run("support", "--base-url", BASE)
    assert "401 Unauthorized" in str(error.value) and "BotFather" in str(error.value)
    assert other not in str(error.value)
