"""A worker killed with kill -9 while the platform holds its send open: the platform
takes the part all the same, the row says the part was in flight, and after a restart
the sweeper hands the message to a new worker, which sends the part again with the same
idempotency key. Where the platform drops a repeat the user sees the part once; where it
cannot, at most twice, and the row counts the possible duplicate
(docs/delivery-guarantees.md).

Each platform's fake implements its real dedupe: WeCom drops a request identical to one
taken within duplicate_check_interval, Feishu answers a repeated uuid with the first
message, the webhook receiver delivers an Idempotency-Key once (as our protocol asks of
receivers, though we cannot know that one does); Telegram, Slack, DingTalk and
WeChat's customer-service API take every request."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from channels_app.tasks import sweep_outbox
from routing.models import ModelBackend
from tests.e2e.conftest import CeleryWorker
from tests.fakes.dingtalk import FakeDingTalk, dingtalk_callback, dingtalk_message
from tests.fakes.feishu import FakeFeishu, feishu_callback, feishu_event
from tests.fakes.model import FakeModel
from tests.fakes.server import FakeServer, Fault
from tests.fakes.slack import DEFAULT_BOT_TOKEN, FakeSlack, slack_callback, slack_event
from tests.fakes.telegram import FakeTelegram, telegram_callback, telegram_update
from tests.fakes.webhook import FakeWebhookReceiver, webhook_callback, webhook_message
from tests.fakes.wechat_mp import (
    DEFAULT_ACCOUNT,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    FakeWeChatMP,
    mp_encrypted_callback,
    mp_text_xml,
)
from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET, FakeWeCom, wecom_callback, wecom_text_xml
from tests.processes import wait_until

pytestmark = pytest.mark.slow

# The lease a worker holds; a killed worker's row is taken over this long after it died.
STUCK_AFTER = 2
# How long the fake platform holds the send open before it takes the part.
HOLD = 3.0
SECRET = "crash-test-secret"
TELEGRAM_TOKEN = "7000000011:AACrashCrashCrashCrashCrashCrashCrash"


@dataclass
class Platform:
    fake: FakeServer
    bot_fields: Callable[[FakeServer], dict]
    deliver: Callable  # (client, bot, fake) -> None: the platform delivers the user's message
    send_path: str
    received_by_user: Callable[[FakeServer], list[str]]  # the texts the user was shown
    drops_repeats: bool


def _post_json(client, bot: Bot, headers: dict, body: bytes) -> None:
    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    response = client.post(bot.callback_path, data=body, content_type="application/json", headers=headers)
    assert response.status_code in (200, 202), response.content


def _post_xml(client, bot: Bot, query: str, body: bytes) -> None:
    response = client.post(f"{bot.callback_path}?{query}", body, content_type="text/xml")
    assert response.status_code == 200, response.content


def _aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()[:43]


def wecom() -> Platform:
    return Platform(
        FakeWeCom(),
        lambda fake: {
            "app_id": DEFAULT_CORP_ID,
            "app_secret": DEFAULT_CORP_SECRET,
            "token": SECRET,
            "encoding_aes_key": _aes_key(),
            "extra": {"agent_id": 1000002},
        },
        lambda client, bot, fake: _post_xml(
            client, bot, *wecom_callback(bot, wecom_text_xml(bot.app_id, "zhangsan", "hello", 5001, 1000002))
        ),
        r"/cgi-bin/message/send",
        lambda fake: [m["text"]["content"] for m in fake.sent],
        drops_repeats=True,
    )


def feishu() -> Platform:
    return Platform(
        FakeFeishu(),
        lambda fake: {
            "app_id": "cli_fake_app",
            "app_secret": "fake-app-secret",
            "token": SECRET,
            "encoding_aes_key": "crash-encrypt-key",
        },
        lambda client, bot, fake: _post_json(
            client,
            bot,
            *feishu_callback(
                feishu_event(bot.app_id, SECRET, "om_crash1", "oc_chat1", "p2p", "ou_user1", "hello"),
                "crash-encrypt-key",
            ),
        ),
        r"/open-apis/im/v1/messages",
        lambda fake: [m["text"] for m in fake.sent],
        drops_repeats=True,
    )


def telegram() -> Platform:
    fake = FakeTelegram()
    fake.add_bot(TELEGRAM_TOKEN, "crash_test_bot")
    return Platform(
        fake,
        lambda fake: {"token": TELEGRAM_TOKEN, "app_secret": SECRET, "extra": {"bot_username": "crash_test_bot"}},
        lambda client, bot, fake: _post_json(
            client, bot, *telegram_callback(telegram_update("hello", chat_id=4242, message_id=7), SECRET)
        ),
        r"/sendMessage$",
        lambda fake: [m["text"] for m in fake.sent],
        drops_repeats=False,
    )


def slack() -> Platform:
    return Platform(
        FakeSlack(),
        lambda fake: {"app_secret": SECRET, "token": DEFAULT_BOT_TOKEN},
        lambda client, bot, fake: _post_json(
            client,
            bot,
            *slack_callback(slack_event("message", "D0DIRECT01", "U0ALICE001", "hello", channel_type="im"), SECRET),
        ),
        r"/api/chat\.postMessage$",
        lambda fake: [m["text"] for m in fake.sent],
        drops_repeats=False,
    )


def _dingtalk_deliver(client, bot: Bot, fake: FakeDingTalk) -> None:
    # The message carries a sessionWebhook the fake opened: the reply goes there.
    message = dingtalk_message(
        "hello",
        msg_id="msgCrash1",
        conversation_id="cidp2pCrash==",
        robot_code=bot.app_id,
        session=fake.open_session("cidp2pCrash=="),
    )
    _post_json(client, bot, *dingtalk_callback(message, str(bot.app_secret)))


def dingtalk() -> Platform:
    fake = FakeDingTalk()
    fake.add_app("dingcrashappkey01", SECRET)
    return Platform(
        fake,
        lambda fake: {"app_id": "dingcrashappkey01", "app_secret": SECRET},
        _dingtalk_deliver,
        r"/robot/sendBySession",
        lambda fake: [m["text"] for m in fake.sent],
        drops_repeats=False,
    )


def wechat_customer_service() -> Platform:
    return Platform(
        FakeWeChatMP(),
        lambda fake: {
            "app_id": DEFAULT_APP_ID,
            "app_secret": DEFAULT_APP_SECRET,
            "token": SECRET,
            "encoding_aes_key": _aes_key(),
            "extra": {"customer_service_api": True},
        },
        lambda client, bot, fake: _post_xml(
            client,
            bot,
            *mp_encrypted_callback(bot, mp_text_xml("oCrashUser000000000000000001", "hello", 5002, DEFAULT_ACCOUNT)),
        ),
        r"/cgi-bin/message/custom/send",
        lambda fake: [m["text"]["content"] for m in fake.sent],
        drops_repeats=False,
    )


def webhook() -> Platform:
    return Platform(
        FakeWebhookReceiver(secret=SECRET),
        lambda fake: {"app_secret": SECRET, "extra": {"outbound_url": fake.outbound_url}},
        lambda client, bot, fake: _post_json(
            client, bot, *webhook_callback(webhook_message("t-crash-1", "ticket-1", "customer-1", "hello"), SECRET)
        ),
        r"/switchboard/replies",
        lambda fake: [m["text"] for m in fake.delivered],
        drops_repeats=False,
    )


PLATFORMS = {
    "wecom": wecom,
    "feishu": feishu,
    "telegram": telegram,
    "slack": slack,
    "dingtalk": dingtalk,
    "wechat_mp": wechat_customer_service,
    "webhook": webhook,
}


@pytest.mark.parametrize("name", PLATFORMS)
def test_a_worker_killed_during_the_send_leaves_at_most_a_counted_duplicate(name, client, transactional_db, settings):
    platform = PLATFORMS[name]()
    with platform.fake as fake, FakeModel() as model:
        backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
        bot = Bot.objects.create(
            name=f"crash-{name}",
            platform=name,
            api_base_url=fake.url,
            default_backend=backend,
            **platform.bot_fields(fake),
        )
        # The platform takes the part, but answers only after the worker is gone.
        fake.plan(platform.send_path, Fault(delay=HOLD, passthrough=True))
        env = {"OUTBOX_STUCK_AFTER": str(STUCK_AFTER)}
        worker = CeleryWorker(extra_env=env).start()
        try:
            platform.deliver(client, bot, fake)
            fake.wait_for(platform.send_path, 1)  # the send is on its way, held open
            worker.kill_hard()
        finally:
            worker.stop()
        row = InboundMessage.objects.get(bot=bot)
        assert (row.status, row.part_in_flight, row.parts_sent) == (MessageStatus.PROCESSING, 0, 0)
        wait_until(lambda: platform.received_by_user(fake), timeout=HOLD + 5, what="the held send taken")

        with CeleryWorker(extra_env=env):
            time.sleep(STUCK_AFTER + 0.5)  # the dead worker's lease lapses
            assert sweep_outbox.run()["processing"] == 1
            wait_until(
                lambda: InboundMessage.objects.get(pk=row.pk).status == MessageStatus.REPLIED,
                timeout=30,
                what="the message replied by the new worker",
            )
            time.sleep(1.0)  # room for a wrong third send
        assert len(fake.received(platform.send_path)) == 2  # the held send and the one after the restart

    row.refresh_from_db()
    shown = platform.received_by_user(fake)
    assert set(shown) == {"[m1] hello (history=0)"}
    assert (row.attempts, row.parts_sent, row.part_in_flight) == (2, 1, None)
    if platform.drops_repeats:
        assert len(shown) == 1 and row.possible_duplicates == 0
    else:
        # The webhook receiver of our fakes dedupes on Idempotency-Key as the protocol
        # asks; we cannot know that, so the row counts the repeat all the same.
        assert len(shown) == (1 if name == "webhook" else 2)
        assert row.possible_duplicates == 1
