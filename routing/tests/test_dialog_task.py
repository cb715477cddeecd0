"""handle_message run in-process against the fake WeCom API and fake model: claiming,
context bookkeeping and re-sends."""

from __future__ import annotations

import base64
import os

import pytest

from channels_app.models import InboundMessage, MessageStatus
from routing.context import ContextStore
from routing.models import ModelBackend
from routing.tasks import handle_message
from tests.fakes.model import FakeModel
from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET, FakeWeCom


@pytest.fixture
def world(make_bot):
    with FakeWeCom() as wecom, FakeModel() as model:
        backend = ModelBackend.objects.create(name="m", kind="openai", base_url=f"{model.url}/v1", model="m1")
        bot = make_bot(app_id=DEFAULT_CORP_ID, app_secret=DEFAULT_CORP_SECRET, token="t",
                       encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
                       api_base_url=wecom.url, default_backend=backend)
        yield bot, wecom
        ContextStore().clear(bot, "zhang", "zhang")


def test_a_reply_resent_from_the_console_is_not_added_to_the_context_twice(world):
    bot, wecom = world
    row = InboundMessage.objects.create(bot=bot, platform_message_id="1", chat_id="zhang", sender_id="zhang",
                                        chat_type="p2p", text="hello", raw={"reply_context": {"touser": "zhang"}})
    assert handle_message.apply(args=[row.pk]).get() == "replied"
    assert len(ContextStore().load(bot, "zhang", "zhang")) == 2

    # What the delivery log's "re-send" action does to the row.
    InboundMessage.objects.filter(pk=row.pk).update(status=MessageStatus.RECEIVED, parts_sent=0)
    assert handle_message.apply(args=[row.pk]).get() == "replied"
    assert [r.json()["text"]["content"] for r in wecom.received(r"/message/send")] == ["[m1] hello (history=0)"] * 2
    assert len(ContextStore().load(bot, "zhang", "zhang")) == 2


def test_a_finished_message_is_not_claimed_again(world):
    bot, wecom = world
    row = InboundMessage.objects.create(bot=bot, platform_message_id="2", chat_id="zhang", sender_id="zhang",
                                        chat_type="p2p", text="once", raw={"reply_context": {"touser": "zhang"}})
    assert handle_message.apply(args=[row.pk]).get() == "replied"
    assert handle_message.apply(args=[row.pk]).get() == "not claimed"
    assert len(wecom.received(r"/message/send")) == 1
