"""A callback's nonce claimed in the same Redis round trip as its hand-off (WeCom, Feishu
with an Encrypt Key, Slack, the webhook, WeChat in safe mode: their signature covers the
message). Outside a test transaction, as in production: a nonce reused for another
message is refused, the very same request again is a re-delivery, as when claimed alone."""

from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings
from django_redis import get_redis_connection

from bots.models import Bot
from channels_app import replay
from channels_app.models import InboundMessage
from config.celery import app
from tests.fakes.slack import slack_callback
from tests.fakes.wecom import wecom_callback, wecom_text_xml


@pytest.fixture
def bot(committed_wecom_bot) -> Bot:
    return committed_wecom_bot


@pytest.fixture
def queue():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(app.conf.task_default_queue)
    yield lambda: client.llen(app.conf.task_default_queue)
    client.delete(app.conf.task_default_queue)


def message(bot: Bot, text: str, msg_id: int, timestamp: int) -> str:
    return wecom_text_xml(bot.app_id, "u1", text, msg_id, 1000002, create_time=timestamp)


def post(client, bot: Bot, text: str, msg_id: int, nonce: str, timestamp: int):
    """The message, encrypted anew on every call (the same message: the same nonce passes)."""
    query, body = wecom_callback(bot, message(bot, text, msg_id, timestamp), timestamp, nonce)
    return client.post(f"{bot.callback_path}?{query}", body, content_type="text/xml")


def test_the_same_request_again_is_answered_as_the_first_and_queued_once(client, bot, queue):
    now = int(time.time())
    assert post(client, bot, "hello", 1, "n-1", now).status_code == 200
    assert post(client, bot, "hello", 1, "n-1", now).status_code == 200
    assert InboundMessage.objects.count() == 1 and queue() == 1


def test_a_reused_nonce_on_another_message_is_refused_and_leaves_no_row(client, bot, queue):
    now = int(time.time())
    assert post(client, bot, "first", 1, "n-2", now).status_code == 200
    response = post(client, bot, "second", 2, "n-2", now)
    assert response.status_code == 409
    assert list(InboundMessage.objects.values_list("text", flat=True)) == ["first"]
    # Its task was queued in the same round trip; it finds no row to claim.
    from channels_app.tasks import handle_message

    assert queue() == 2
    assert handle_message.apply(args=(InboundMessage.objects.get().pk + 1, None)).get() == "not claimed"


def test_a_redelivery_under_a_new_nonce_is_a_duplicate_and_claims_its_nonce(client, bot, queue):
    now = int(time.time())
    assert post(client, bot, "hello", 1, "n-3", now).status_code == 200
    assert post(client, bot, "hello", 1, "n-4", now).status_code == 200  # WeCom's retry
    assert post(client, bot, "other", 2, "n-4", now).status_code == 409  # its nonce on another message
    # The refused message's task was queued with the claim; it finds no row to claim.
    assert list(InboundMessage.objects.values_list("text", flat=True)) == ["hello"] and queue() == 2


def test_a_row_whose_nonce_a_copy_of_its_request_claimed_first_is_kept(client, bot, queue):
    """The copy sent again while the first was recorded but not yet handed off: the copy
    finds the row (a duplicate) and claims the nonce alone; the first's claim, riding
    with its hand-off, then finds the same message under it and keeps its row."""
    now = int(time.time())
    valid_until = now + settings.CALLBACK_TIMESTAMP_WINDOW
    copy = replay.NonceClaim.of(f"{bot.uuid}:n-5", message(bot, "hello", 3, now), valid_until)
    assert replay.claim(copy) is replay.Claim.NEW
    assert post(client, bot, "hello", 3, "n-5", now).status_code == 200
    assert InboundMessage.objects.count() == 1 and queue() == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"token": "t", "challenge": "c-1", "type": "url_verification"},  # a handshake
        {"token": "t", "type": "event_callback", "event_id": "Ev1", "event": {"type": "reaction_added"}},  # ignored
    ],
)
def test_a_request_with_no_hand_off_still_has_its_nonce_checked(client, transactional_db, payload):
    bot = Bot.objects.create(
        name="slack-fused", platform="slack", app_secret="signing-secret", token="xoxb-1", extra={}
    )
    headers, body = slack_callback(payload, "signing-secret")
    content_type = headers.pop("Content-Type")
    first = client.post(bot.callback_path, body, content_type=content_type, headers=headers)
    assert first.status_code == 200
    assert get_redis_connection("default").exists(replay.key(f"{bot.uuid}:sig:{headers['X-Slack-Signature']}"))
    assert InboundMessage.objects.count() == 0
