"""The whole loop on DingTalk: a signed robot callback in, the reply out through the
conversation's sessionWebhook (or the robot API once it has expired) at a fake DingTalk,
the model answering through a fake OpenAI-compatible server, a real Celery worker."""

from __future__ import annotations

import json
import time

import pytest

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from routing.models import ModelBackend
from tests.fakes.dingtalk import FakeDingTalk, dingtalk_callback, dingtalk_message
from tests.fakes.model import FakeModel

pytestmark = pytest.mark.slow

APP_KEY = "dinge2eappkey0001"
APP_SECRET = "e2e-app-secret"
SENT = r"/robot/sendBySession$|/v1\.0/robot/"


@pytest.fixture
def dingtalk():
    with FakeDingTalk() as fake:
        fake.add_app(APP_KEY, APP_SECRET)
        yield fake


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def bot(transactional_db, dingtalk, model) -> Bot:
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    return Bot.objects.create(
        name="dingtalk-helpdesk",
        platform="dingtalk",
        app_id=APP_KEY,
        app_secret=APP_SECRET,
        api_base_url=dingtalk.url,
        default_backend=backend,
    )


def callback(
    dingtalk: FakeDingTalk,
    msg_id: str,
    text: str,
    *,
    group: bool = False,
    mentioned: bool = True,
    webhook_lifetime_ms: int = 5_400_000,
    secret: str = APP_SECRET,
) -> tuple[dict, bytes]:
    conversation = "cidGroupE2E==" if group else "cidp2pE2E=="
    message = dingtalk_message(
        text,
        msg_id=msg_id,
        conversation_type="2" if group else "1",
        conversation_id=conversation,
        robot_code=APP_KEY,
        in_at_list=mentioned if group else None,
        session=dingtalk.open_session(conversation, "2" if group else "1", webhook_lifetime_ms),
    )
    return dingtalk_callback(message, secret)


def post(client, bot: Bot, headers: dict, body: bytes):
    headers = {k: v for k, v in headers.items() if k != "Content-Type"}
    return client.post(bot.callback_path, data=body, content_type="application/json", headers=headers)


def test_one_message_gets_exactly_one_reply_and_forged_or_replayed_callbacks_none(client, bot, dingtalk, celery_worker):
    headers, body = callback(dingtalk, "msg-e2e-1", "hello")
    assert post(client, bot, headers, body).status_code == 200
    [reply] = dingtalk.wait_for(SENT, 1)
    assert reply.path == "/robot/sendBySession"
    assert reply.json() == {"msgtype": "text", "text": {"content": "[m1] hello (history=0)"}}

    assert post(client, bot, headers, body).status_code == 200  # the same request again: a re-delivery
    forged = json.loads(body)
    forged["text"]["content"] = "another question"
    assert post(client, bot, headers, json.dumps(forged).encode()).status_code == 409  # its headers, another body
    assert post(client, bot, *callback(dingtalk, "msg-e2e-2", "forged", secret="guessed")).status_code == 401
    time.sleep(1.0)  # room for a wrong second reply to arrive
    assert len(dingtalk.received(SENT)) == 1
    assert [(m["via"], m["conversation_id"]) for m in dingtalk.sent] == [("session", "cidp2pE2E==")]
    assert list(InboundMessage.objects.values_list("platform_message_id", "status")) == [
        ("msg-e2e-1", MessageStatus.REPLIED)
    ]
    assert dingtalk.token_requests() == 0  # the sessionWebhook needs no token


def test_after_the_session_webhook_expires_the_robot_api_answers(client, bot, dingtalk, celery_worker):
    assert post(client, bot, *callback(dingtalk, "msg-e2e-3", "late", webhook_lifetime_ms=-1000)).status_code == 200
    [reply] = dingtalk.wait_for(SENT, 1)
    assert reply.path == "/v1.0/robot/oToMessages/batchSend"
    assert reply.json()["userIds"] == ["manager4220"]
    assert json.loads(reply.json()["msgParam"]) == {"content": "[m1] late (history=0)"}
    time.sleep(0.5)
    assert len(dingtalk.received(SENT)) == 1


def test_in_a_group_only_the_mention_is_answered(client, bot, dingtalk, celery_worker):
    assert (
        post(client, bot, *callback(dingtalk, "msg-e2e-4", "chatter", group=True, mentioned=False)).status_code == 200
    )
    assert post(client, bot, *callback(dingtalk, "msg-e2e-5", " 总结一下", group=True)).status_code == 200
    [reply] = dingtalk.wait_for(SENT, 1)
    assert reply.json()["text"]["content"] == "[m1] 总结一下 (history=0)"
    time.sleep(0.5)
    assert [(m["via"], m["conversation_id"]) for m in dingtalk.sent] == [("session", "cidGroupE2E==")]
    assert not InboundMessage.objects.filter(platform_message_id="msg-e2e-4").exists()
