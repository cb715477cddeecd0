"""The whole loop on a WeChat Official Account with real parts: the callback view,
PostgreSQL, Redis, a Celery worker process, a fake WeChat API and a fake model server.

Customer-service mode answers through message/custom/send. Passive mode answers in the
callback's own response, and WeChat's patience is simulated as WeChat behaves: it waits
5 s for the answer to a delivery; a response later than that reaches nobody, and it
delivers the same MsgId again (new timestamp and nonce), 3 deliveries in all."""

from __future__ import annotations

import base64
import os
import secrets
import time
from dataclasses import dataclass, field

import pytest

from bots.models import Bot
from channels_app.adapters.wechat_mp.passive import CONTINUED, EARLIER_ANSWER, SEPARATOR, STILL_THINKING
from channels_app.models import InboundMessage, MessageStatus
from routing.models import ModelBackend
from tests.fakes.model import FakeModel
from tests.fakes.wechat_mp import (
    DEFAULT_ACCOUNT,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    FakeWeChatMP,
    mp_encrypted_callback,
    mp_text_xml,
    read_passive_reply,
)

pytestmark = pytest.mark.slow

OPENID = "oE2eUser0000000000000000001a"
CUSTOM_SEND = r"/cgi-bin/message/custom/send$"


@pytest.fixture
def wechat():
    with FakeWeChatMP() as fake:
        yield fake


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


def make_bot(wechat: FakeWeChatMP, model: FakeModel, customer_service: bool) -> Bot:
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    return Bot.objects.create(
        name=f"mp-{'cs' if customer_service else 'passive'}",
        platform="wechat_mp",
        app_id=DEFAULT_APP_ID,
        app_secret=DEFAULT_APP_SECRET,
        token=secrets.token_urlsafe(12),
        encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
        api_base_url=wechat.url,
        extra={"customer_service_api": customer_service},
        default_backend=backend,
    )


@pytest.fixture
def cs_bot(transactional_db, wechat, model) -> Bot:
    return make_bot(wechat, model, customer_service=True)


@pytest.fixture
def passive_bot(transactional_db, wechat, model) -> Bot:
    return make_bot(wechat, model, customer_service=False)


@dataclass
class Delivery:
    body: bytes
    seconds: float


@dataclass
class Outcome:
    """What one user message came to: every delivery WeChat made, and what the user saw."""

    deliveries: list[Delivery] = field(default_factory=list)
    shown: str | None = None  # the passive reply's text, if one arrived in time
    service_unavailable: bool = False  # WeChat's "该公众号暂时无法提供服务"


class WeChatServer:
    """WeChat's side of the callbacks for one account. The test client cannot drop a
    connection, so a response slower than `deadline` counts as the timeout it is."""

    def __init__(self, client, bot: Bot, deadline: float = 5.0) -> None:
        self.client, self.bot, self.deadline = client, bot, deadline

    def deliver_once(self, text: str, msg_id: int, openid: str = OPENID) -> Delivery:
        query, body = mp_encrypted_callback(self.bot, mp_text_xml(openid, text, msg_id, DEFAULT_ACCOUNT))
        started = time.monotonic()
        response = self.client.post(f"{self.bot.callback_path}?{query}", body, content_type="text/xml")
        assert response.status_code == 200, response.content
        return Delivery(response.content, time.monotonic() - started)

    def message(self, text: str, msg_id: int, openid: str = OPENID) -> Outcome:
        outcome = Outcome()
        for _ in range(3):
            delivery = self.deliver_once(text, msg_id, openid)
            outcome.deliveries.append(delivery)
            if delivery.seconds < self.deadline:
                # Any answer in time ends WeChat's deliveries: "success" or an empty body
                # means "no reply", anything else must be a passive reply.
                if delivery.body not in (b"", b"success"):
                    outcome.shown = read_passive_reply(self.bot, delivery.body, encrypted=True)["Content"]
                return outcome
        outcome.service_unavailable = True
        return outcome


def wait_for_status(msg_id: int, status: str, timeout: float = 30) -> InboundMessage:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = InboundMessage.objects.filter(platform_message_id=str(msg_id)).first()
        if row is not None and row.status == status:
            return row
        time.sleep(0.05)
    raise AssertionError(f"message {msg_id} is {row.status if row else 'missing'}, not {status}, after {timeout} s")


# -- customer-service mode ---------------------------------------------------------------------


def test_customer_service_mode_answers_once_through_custom_send(client, cs_bot, wechat, celery_worker):
    server = WeChatServer(client, cs_bot)
    first = server.message("hello", 1001)
    assert [d.body for d in first.deliveries] == [b"success"] and first.deliveries[0].seconds < 1.0

    [sent] = wechat.wait_for(CUSTOM_SEND, 1)
    assert sent.json() == {"touser": OPENID, "msgtype": "text", "text": {"content": "[m1] hello (history=0)"}}
    row = wait_for_status(1001, MessageStatus.REPLIED)
    assert row.parts_sent == 1 and row.acked_ms is not None

    assert server.message("hello", 1001).deliveries[0].body == b"success"  # a re-delivery
    server.message("and again?", 1002)
    second = wechat.wait_for(CUSTOM_SEND, 2)[1]
    assert second.json()["text"]["content"] == "[m1] and again? (history=2)"
    time.sleep(1.0)  # room for a wrong extra send to arrive
    assert len(wechat.received(CUSTOM_SEND)) == 2
    assert len(wechat.received(r"/stable_token")) == 1


def test_an_unverified_account_fails_once_with_the_hint(client, cs_bot, wechat, celery_worker):
    wechat.verified = False
    WeChatServer(client, cs_bot).message("hello", 1101)
    row = wait_for_status(1101, MessageStatus.FAILED)
    assert "48001" in row.error and "customer_service_api" in row.error
    time.sleep(1.5)
    assert len(wechat.received(CUSTOM_SEND)) == 1  # permanent: not retried


# -- passive mode ------------------------------------------------------------------------------


def test_passive_mode_answers_in_the_callbacks_own_response(client, passive_bot, wechat, celery_worker):
    server = WeChatServer(client, passive_bot)
    outcome = server.message("hello", 2001)

    assert outcome.shown == "[m1] hello (history=0)"
    assert len(outcome.deliveries) == 1 and outcome.deliveries[0].seconds < 4.5
    row = wait_for_status(2001, MessageStatus.REPLIED)
    assert row.raw["passive"]["delivered_with"] == "2001" and row.raw["passive"]["parts_delivered"] == 1

    assert server.message("and again?", 2002).shown == "[m1] and again? (history=2)"
    assert wechat.requests == []  # passive mode never calls WeChat's API


def test_a_model_slower_than_one_delivery_answers_in_wechats_redelivery(client, passive_bot, model, celery_worker):
    # WeChat's real 5 s and our default 4.5 s wait / 5.5 s hold.
    model.delay = 6.0
    server = WeChatServer(client, passive_bot)
    outcome = server.message("take your time", 3001)

    first, second = outcome.deliveries
    assert first.body == b"" and first.seconds >= 5.0  # held past WeChat's deadline: it delivers again
    assert second.seconds < 4.5
    assert outcome.shown == "[m1] take your time (history=0)"
    assert len(model.received(r"/chat/completions")) == 1
    row = wait_for_status(3001, MessageStatus.REPLIED)
    assert row.raw["passive"] == {**row.raw["passive"], "parts_delivered": 1, "delivered_with": "3001"}

    model.delay = 0.0
    # Handed over once: the next answer comes alone.
    assert server.message("thanks", 3002).shown == "[m1] thanks (history=2)"


def test_a_model_slower_than_all_deliveries_answers_with_the_next_message(
    client, passive_bot, model, settings, celery_worker
):
    # Every wait shortened about ten-fold: WeChat's 5 s deadline becomes 0.55 s.
    settings.WECHAT_PASSIVE_WAIT_MS, settings.WECHAT_PASSIVE_HOLD_MS = 400, 700
    model.delay = 3.0
    server = WeChatServer(client, passive_bot, deadline=0.55)

    slow = server.message("what is the meaning of life", 4001)

    assert [d.body for d in slow.deliveries[:2]] == [b"", b""]
    assert slow.shown == STILL_THINKING and slow.service_unavailable is False
    assert len(slow.deliveries) == 3
    row = wait_for_status(4001, MessageStatus.REPLIED)
    assert "waiting_since" in row.raw["passive"] and "delivered_at" not in row.raw["passive"]

    model.delay = 0.0
    nxt = server.message("thanks", 4002)
    earlier = EARLIER_ANSWER.format(question="what is the mean…")
    assert nxt.shown == f"{earlier}[m1] what is the meaning of life (history=0){SEPARATOR}[m1] thanks (history=2)"
    row.refresh_from_db()
    assert row.raw["passive"]["delivered_with"] == "4002"
    assert server.message("bye", 4003).shown == "[m1] bye (history=4)"  # the late answer came once


def test_a_long_passive_answer_continues_with_the_next_messages(client, passive_bot, model, celery_worker):
    paragraphs = [f"第{n}段：" + "内容" * 150 for n in range(5)]  # about 900 bytes each
    model.answer = lambda request: (
        "\n\n".join(paragraphs)
        if "everything" in request["messages"][-1]["content"]
        else f"ok: {request['messages'][-1]['content']}"
    )
    server = WeChatServer(client, passive_bot)

    shown = [server.message("tell me everything", 5001).shown]
    while shown[-1].endswith(CONTINUED) and len(shown) < 8:
        shown.append(server.message(f"继续 {len(shown)}", 5001 + len(shown)).shown)

    assert len(shown) >= 3 and not shown[-1].endswith(CONTINUED)
    assert all(len(text.encode()) <= 2048 for text in shown)
    everything = "".join(shown)
    for paragraph in paragraphs:  # nothing cut, nothing twice
        assert everything.count(paragraph) == 1
    for n in range(1, len(shown)):
        assert everything.count(f"ok: 继续 {n}") == 1
    row = wait_for_status(5001, MessageStatus.REPLIED)
    assert row.parts_sent == row.raw["passive"]["parts_delivered"] >= 3
