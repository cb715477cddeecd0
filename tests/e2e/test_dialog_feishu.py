"""The whole loop on Feishu: an encrypted, signed event in, a threaded reply out through
a fake Feishu Open API, the model answering through a fake OpenAI-compatible server."""

from __future__ import annotations

import time

import pytest

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from routing.models import ModelBackend
from tests.fakes.feishu import FakeFeishu, feishu_callback, feishu_event
from tests.fakes.model import FakeModel

pytestmark = pytest.mark.slow

ENCRYPT_KEY = "e2e-encrypt-key"
VERIFICATION_TOKEN = "e2e-verification-token"


@pytest.fixture
def feishu():
    with FakeFeishu() as fake:
        yield fake


@pytest.fixture
def bot(transactional_db, feishu) -> Bot:
    model = FakeModel().start()
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    yield Bot.objects.create(
        name="feishu-helpdesk",
        platform="feishu",
        app_id="cli_fake_app",
        app_secret="fake-app-secret",
        token=VERIFICATION_TOKEN,
        encoding_aes_key=ENCRYPT_KEY,
        api_base_url=feishu.url,
        default_backend=backend,
    )
    model.stop()


def deliver(client, bot: Bot, message_id: str, text: str, chat_type: str = "p2p", mentions=None) -> None:
    event = feishu_event(bot.app_id, VERIFICATION_TOKEN, message_id, "oc_chat1", chat_type, "ou_user1", text, mentions)
    headers, body = feishu_callback(event, ENCRYPT_KEY)
    headers.pop("Content-Type")
    response = client.post(bot.callback_path, data=body, content_type="application/json", headers=headers)
    assert response.status_code == 200 and response.json() == {}


def test_feishu_messages_are_answered_in_thread_once_with_context(client, bot, feishu, celery_worker):
    deliver(client, bot, "om_1", "hello")
    [reply] = feishu.wait_for(r"/reply$", 1)
    assert reply.path == "/open-apis/im/v1/messages/om_1/reply"
    assert reply.json()["msg_type"] == "text"
    assert reply.json()["content"] == '{"text": "[m1] hello (history=0)"}'

    deliver(client, bot, "om_1", "hello")  # Feishu re-pushes an event it thinks we missed
    deliver(
        client,
        bot,
        "om_2",
        "@_user_1 and now?",
        chat_type="group",
        mentions=[{"key": "@_user_1", "open_id": "ou_bot", "name": "Helpdesk"}],
    )
    replies = feishu.wait_for(r"/reply$", 2)
    assert replies[1].path == "/open-apis/im/v1/messages/om_2/reply"
    # Context is per chat and sender: the same chat id and user as the first turn.
    assert replies[1].json()["content"] == '{"text": "[m1] and now? (history=2)"}'
    time.sleep(1.0)
    assert len(feishu.received(r"/reply$")) == 2
    assert InboundMessage.objects.filter(status=MessageStatus.REPLIED).count() == 2
    assert len(feishu.received(r"tenant_access_token")) == 1


def test_an_unmentioned_group_message_is_not_answered(client, bot, feishu, celery_worker):
    deliver(client, bot, "om_9", "just chatting", chat_type="group")
    deliver(client, bot, "om_10", "direct question")
    feishu.wait_for(r"/reply$", 1)
    time.sleep(0.5)
    assert [r.path for r in feishu.received(r"/reply$")] == ["/open-apis/im/v1/messages/om_10/reply"]
    assert not InboundMessage.objects.filter(platform_message_id="om_9").exists()
