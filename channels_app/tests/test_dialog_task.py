"""handle_message run in-process against the fake WeCom API and fake model: claiming,
context bookkeeping and re-sends."""

from __future__ import annotations

import base64
import os
import time
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from channels_app.models import InboundMessage, MessageStatus
from channels_app.tasks import handle_message, sweep_outbox
from routing import ratelimit
from routing.context import ContextStore
from routing.models import ModelBackend
from tests.broker import decode_task_message
from tests.fakes.model import FakeModel
from tests.fakes.server import Fault
from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET, FakeWeCom


@pytest.fixture
def world(make_bot):
    with FakeWeCom() as wecom, FakeModel() as model:
        backend = ModelBackend.objects.create(name="m", kind="openai", base_url=f"{model.url}/v1", model="m1")
        bot = make_bot(
            app_id=DEFAULT_CORP_ID,
            app_secret=DEFAULT_CORP_SECRET,
            token="t",
            encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
            api_base_url=wecom.url,
            default_backend=backend,
        )
        yield bot, wecom
        ContextStore().clear(bot, "zhang", "zhang")


def test_a_reply_resent_from_the_console_is_not_added_to_the_context_twice(world):
    bot, wecom = world
    row = InboundMessage.objects.create(
        bot=bot,
        platform_message_id="1",
        chat_id="zhang",
        sender_id="zhang",
        chat_type="p2p",
        text="hello",
        raw={"reply_context": {"touser": "zhang"}},
    )
    assert handle_message.apply(args=[row.pk]).get() == "replied"
    assert len(ContextStore().load(bot, "zhang", "zhang")) == 2

    # What the delivery log's "re-send" action does to the row.
    InboundMessage.objects.filter(pk=row.pk).update(status=MessageStatus.RECEIVED, parts_sent=0)
    assert handle_message.apply(args=[row.pk]).get() == "replied"
    assert [r.json()["text"]["content"] for r in wecom.received(r"/message/send")] == ["[m1] hello (history=0)"] * 2
    # Sent without WeCom's duplicate check, which would drop the same text as a repeat.
    assert [m["text"]["content"] for m in wecom.sent] == ["[m1] hello (history=0)"] * 2
    assert len(ContextStore().load(bot, "zhang", "zhang")) == 2


@pytest.mark.parametrize("interval", [1800, 0])
def test_a_send_whose_answer_was_lost_is_sent_again_and_counted(world, settings, interval):
    """WeCom took the part, but its answer never came back: the retry sends the part
    again. With WeCom's duplicate check the user sees it once; without, twice, and the
    row says so."""
    settings.WECOM_DUPLICATE_CHECK_INTERVAL = interval
    bot, wecom = world
    wecom.plan(r"/message/send", Fault(passthrough=True, hang_up=True))
    row = InboundMessage.objects.create(
        bot=bot,
        platform_message_id="3",
        chat_id="zhang",
        sender_id="zhang",
        chat_type="p2p",
        text="lost",
        raw={"reply_context": {"touser": "zhang"}},
    )
    # The send fails; the retry (run in place by apply()) sends the part again.
    assert handle_message.apply(args=[row.pk]).get() == "replied"

    row.refresh_from_db()
    assert len(wecom.received(r"/message/send")) == 2
    assert [m["text"]["content"] for m in wecom.sent] == ["[m1] lost (history=0)"] * (1 if interval else 2)
    assert (row.possible_duplicates, row.part_in_flight) == (0 if interval else 1, None)


def test_a_part_the_platform_refused_is_not_counted_as_a_possible_duplicate(world, settings):
    settings.WECOM_DUPLICATE_CHECK_INTERVAL = 0
    bot, wecom = world
    wecom.plan(r"/message/send", Fault(503, "upstream busy"))
    row = InboundMessage.objects.create(
        bot=bot,
        platform_message_id="4",
        chat_id="zhang",
        sender_id="zhang",
        chat_type="p2p",
        text="busy",
        raw={"reply_context": {"touser": "zhang"}},
    )
    assert handle_message.apply(args=[row.pk]).get() == "replied"  # after one retry
    row.refresh_from_db()
    assert len(wecom.received(r"/message/send")) == 2
    assert row.possible_duplicates == 0 and len(wecom.sent) == 1


def test_a_finished_message_is_not_claimed_again(world):
    bot, wecom = world
    row = InboundMessage.objects.create(
        bot=bot,
        platform_message_id="2",
        chat_id="zhang",
        sender_id="zhang",
        chat_type="p2p",
        text="once",
        raw={"reply_context": {"touser": "zhang"}},
    )
    assert handle_message.apply(args=[row.pk]).get() == "replied"
    assert handle_message.apply(args=[row.pk]).get() == "not claimed"
    assert len(wecom.received(r"/message/send")) == 1


# -- a send slot far away: the task comes back for it instead of holding a worker -------


def _queued_deferrals(bot_row_pk: int) -> list[dict]:
    """The deferred tasks queued for this row, taken off the queue."""
    import redis
    from django.conf import settings

    from config.celery import app

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = []
    for raw in client.lrange(app.conf.task_default_queue, 0, -1):
        envelope = decode_task_message(raw)
        args, kwargs, _ = envelope["body"]
        if args == [bot_row_pk] and "slot_at" in kwargs:
            found.append({"slot_at": kwargs["slot_at"], "eta": envelope["headers"]["eta"]})
            client.lrem(app.conf.task_default_queue, 1, raw)
    return found


@pytest.fixture
def slow_bot(world):
    bot, wecom = world
    # One send per 2.2 s: a slot taken just before leaves the next one 2.2 s away, past
    # DEFER_SLOT_AFTER (1 s) by a margin that a slow machine's model call and failed send
    # cannot eat up (at one per 1.1 s, 100 ms of either turned a deferral into a wait).
    bot.rate_limit_qps = 0.5
    bot.save()
    return bot, wecom


def _message(bot, msg_id: str) -> InboundMessage:
    return InboundMessage.objects.create(
        bot=bot,
        platform_message_id=msg_id,
        chat_id="zhang",
        sender_id="zhang",
        chat_type="p2p",
        text=f"paced {msg_id}",
        raw={"reply_context": {"touser": "zhang"}},
    )


def test_a_far_slot_defers_the_task_and_it_sends_in_its_slot(slow_bot):
    bot, wecom = slow_bot
    assert ratelimit.reserve_slot(bot) == 0  # someone else just sent: the next slot is 2.2 s away
    row = _message(bot, "31")
    assert handle_message.apply(args=[row.pk]).get() == "deferred"
    row.refresh_from_db()
    assert row.status == MessageStatus.PROCESSING and row.reply_text  # the model answered once
    assert row.started_at > timezone.now() + timedelta(seconds=0.8)
    assert wecom.received(r"/message/send") == []
    [deferral] = _queued_deferrals(row.pk)
    assert datetime.fromisoformat(deferral["eta"]) >= datetime.fromisoformat(deferral["slot_at"])

    # No sweeper run takes it while it waits for its slot.
    assert sweep_outbox()["processing"] == 0
    # A stray copy that does not hold the slot finds nothing to do.
    assert handle_message.apply(args=[row.pk], kwargs={"slot_at": timezone.now().isoformat()}).get() == "not claimed"

    assert handle_message.apply(args=[row.pk], kwargs={"slot_at": deferral["slot_at"]}).get() == "replied"
    [sent] = wecom.received(r"/message/send")
    assert sent.at >= datetime.fromisoformat(deferral["slot_at"]).timestamp()
    assert sent.json()["text"]["content"] == "[m1] paced 31 (history=0)"
    row.refresh_from_db()
    assert row.status == MessageStatus.REPLIED and row.attempts == 1


def test_a_deferred_task_back_too_late_gives_up_its_slot_for_a_new_one(slow_bot):
    bot, wecom = slow_bot
    ratelimit.reserve_slot(bot)
    row = _message(bot, "32")
    assert handle_message.apply(args=[row.pk]).get() == "deferred"
    [deferral] = _queued_deferrals(row.pk)
    slot = datetime.fromisoformat(deferral["slot_at"])
    time.sleep(max((slot - timezone.now()).total_seconds(), 0) + 0.3)  # the worker was busy: 300 ms late
    ratelimit.reserve_slot(bot)  # meanwhile another message took the next slot
    assert handle_message.apply(args=[row.pk], kwargs={"slot_at": deferral["slot_at"]}).get() == "deferred"
    assert wecom.received(r"/message/send") == []
    assert len(_queued_deferrals(row.pk)) == 1


def test_a_near_slot_is_waited_for_in_place(slow_bot):
    bot, wecom = slow_bot
    row = _message(bot, "33")
    assert handle_message.apply(args=[row.pk]).get() == "replied"  # the first slot is free
    assert _queued_deferrals(row.pk) == []


def test_a_send_that_fails_after_a_deferral_is_retried_as_a_fresh_message(slow_bot):
    bot, wecom = slow_bot
    wecom.plan(r"/message/send", Fault(503, "upstream busy"))
    ratelimit.reserve_slot(bot)
    row = _message(bot, "34")
    assert handle_message.apply(args=[row.pk]).get() == "deferred"
    [deferral] = _queued_deferrals(row.pk)
    # The send in its slot fails; the retry claims the row as received and, the next
    # slot being 2.2 s away again, defers once more.
    handle_message.apply(args=[row.pk], kwargs={"slot_at": deferral["slot_at"]})
    [again] = _queued_deferrals(row.pk)
    assert handle_message.apply(args=[row.pk], kwargs={"slot_at": again["slot_at"]}).get() == "replied"
    assert len(wecom.received(r"/message/send")) == 2  # the refused one and the one that arrived
    row.refresh_from_db()
    assert row.status == MessageStatus.REPLIED
