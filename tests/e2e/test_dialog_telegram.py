"""The whole loop on Telegram: a webhook update in, sendMessage out at a fake Bot API,
the model answering through a fake OpenAI-compatible server, a real Celery worker."""

from __future__ import annotations

import time

import pytest

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from routing.models import ModelBackend
from tests.fakes.model import FakeModel
from tests.fakes.telegram import FakeTelegram, entity, telegram_callback, telegram_update

pytestmark = pytest.mark.slow

TOKEN = "7000000009:AAE2eE2eE2eE2eE2eE2eE2eE2eE2eE2eE2e"
USERNAME = "helpdesk_e2e_bot"
SECRET = "e2e-webhook-secret"


@pytest.fixture
def telegram():
    with FakeTelegram() as fake:
        fake.add_bot(TOKEN, USERNAME)
        yield fake


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def bot(transactional_db, telegram, model) -> Bot:
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    return Bot.objects.create(
        name="telegram-helpdesk",
        platform="telegram",
        token=TOKEN,
        app_secret=SECRET,
        api_base_url=telegram.url,
        extra={"bot_username": USERNAME},
        default_backend=backend,
    )


def post(client, bot: Bot, headers: dict, body: bytes):
    headers = {k: v for k, v in headers.items() if k != "Content-Type"}
    return client.post(bot.callback_path, data=body, content_type="application/json", headers=headers)


def test_one_message_gets_exactly_one_reply_and_forged_or_replayed_updates_none(client, bot, telegram, celery_worker):
    headers, body = telegram_callback(telegram_update("hello", chat_id=4242, message_id=7), SECRET)
    assert post(client, bot, headers, body).status_code == 200
    [reply] = telegram.wait_for(r"/sendMessage$", 1)
    assert reply.path == f"/bot{TOKEN}/sendMessage"
    assert reply.json() == {
        "chat_id": 4242,
        "text": "[m1] hello (history=0)",
        "reply_parameters": {"message_id": 7, "allow_sending_without_reply": True},
    }

    # Telegram's redelivery and an attacker's replay look the same: acknowledged, not answered.
    assert post(client, bot, headers, body).status_code == 200
    forged = telegram_callback(telegram_update("forged", chat_id=4242, message_id=8), "guessed-secret")
    assert post(client, bot, *forged).status_code == 401
    time.sleep(1.0)  # room for a wrong second reply to arrive
    assert len(telegram.received(r"/sendMessage$")) == 1
    assert list(InboundMessage.objects.values_list("platform_message_id", "status")) == [
        ("4242:7", MessageStatus.REPLIED)
    ]


def test_in_a_group_only_the_mention_is_answered(client, bot, telegram, celery_worker):
    chatter = telegram_update("lunch?", chat_id=-100555, chat_type="supergroup", message_id=30)
    assert post(client, bot, *telegram_callback(chatter, SECRET)).status_code == 200
    text = f"@{USERNAME} what is 2+2?"
    question = telegram_update(
        text, chat_id=-100555, chat_type="supergroup", message_id=31, entities=[entity(text, f"@{USERNAME}")]
    )
    assert post(client, bot, *telegram_callback(question, SECRET)).status_code == 200
    [reply] = telegram.wait_for(r"/sendMessage$", 1)
    assert reply.json()["text"] == "[m1] what is 2+2? (history=0)"
    assert reply.json()["reply_parameters"]["message_id"] == 31
    time.sleep(0.5)
    assert len(telegram.received(r"/sendMessage$")) == 1
    assert not InboundMessage.objects.filter(platform_message_id="-100555:30").exists()
