"""The whole loop on the generic webhook: a signed message in through the real view, a
real Celery worker, the model behind a fake OpenAI-compatible server, and the signed
reply at a fake integrator that verifies it as the README tells integrators to."""

from __future__ import annotations

import time

import pytest

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from routing.models import ModelBackend
from tests.fakes.model import FakeModel
from tests.fakes.server import Fault
from tests.fakes.webhook import REPLY_PATH, FakeWebhookReceiver, webhook_callback, webhook_message

pytestmark = pytest.mark.slow

SECRET = "e2e-shared-secret"


@pytest.fixture
def receiver():
    with FakeWebhookReceiver(secret=SECRET) as fake:
        yield fake


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def bot(transactional_db, receiver, model) -> Bot:
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    return Bot.objects.create(
        name="helpdesk-hook",
        platform="webhook",
        app_secret=SECRET,
        extra={"outbound_url": receiver.outbound_url},
        default_backend=backend,
    )


def post(client, bot: Bot, headers: dict[str, str], body: bytes):
    headers = dict(headers)
    headers.pop("Content-Type")
    return client.post(bot.callback_path, data=body, content_type="application/json", headers=headers)


def wait_for_status(message_id: str, status: str, timeout: float = 30) -> InboundMessage:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = InboundMessage.objects.filter(platform_message_id=message_id).first()
        if row is not None and row.status == status:
            return row
        time.sleep(0.05)
    raise AssertionError(f"message {message_id} is {row.status if row else 'missing'}, not {status}")


def test_one_message_gets_exactly_one_signed_reply(client, bot, receiver, celery_worker):
    message = webhook_message("t-1-c-1", "ticket-1", "customer-7", "hello", metadata={"ticket": 1})
    sent_at = int(time.time())
    response = post(client, bot, *webhook_callback(message, SECRET, timestamp=sent_at))
    assert (response.status_code, response.json()) == (202, {"status": "accepted", "id": "t-1-c-1"})

    [request] = receiver.wait_for(REPLY_PATH, 1)
    row = wait_for_status("t-1-c-1", MessageStatus.REPLIED)
    assert receiver.delivered == [
        {
            "id": request.headers["idempotency-key"],
            "in_reply_to": "t-1-c-1",
            "conversation": "ticket-1",
            "user": "customer-7",
            "text": "[m1] hello (history=0)",
            "part": 1,
            "parts": 1,
            "metadata": {"ticket": 1},
        }
    ]
    assert request.headers["idempotency-key"].endswith(f"-{row.pk}-0")

    # The sender's retry of the same id, signed anew: accepted, not answered again.
    again = post(client, bot, *webhook_callback(message, SECRET, timestamp=sent_at + 2))
    assert again.status_code == 202
    time.sleep(1.5)  # room for a wrong second reply to arrive
    assert len(receiver.received(REPLY_PATH)) == 1
    assert InboundMessage.objects.count() == 1


def test_forged_and_replayed_messages_get_no_reply(client, bot, receiver, celery_worker):
    forged = webhook_message("t-2-c-1", "ticket-2", "mallory", "forged")
    assert post(client, bot, *webhook_callback(forged, "a guessed secret")).status_code == 401

    signed = webhook_callback(webhook_message("t-3-c-1", "ticket-3", "customer-8", "real question"), SECRET)
    assert post(client, bot, *signed).status_code == 202
    receiver.wait_for(REPLY_PATH, 1)
    assert post(client, bot, *signed).status_code == 202  # the captured request, sent again: a re-delivery
    stale = webhook_callback(
        webhook_message("t-4-c-1", "ticket-4", "customer-9", "old"), SECRET, timestamp=int(time.time()) - 600
    )
    assert post(client, bot, *stale).status_code == 401
    time.sleep(1.5)
    assert [r["in_reply_to"] for r in receiver.delivered] == ["t-3-c-1"]
    assert len(receiver.received(REPLY_PATH)) == 1
    assert list(InboundMessage.objects.values_list("platform_message_id", flat=True)) == ["t-3-c-1"]


def test_a_long_answer_arrives_as_numbered_parts_in_order(client, bot, receiver, model, celery_worker):
    paragraphs = [f"Section {n}. " + "Lorem ipsum dolor sit amet. " * 214 for n in range(4)]  # ~6,000 chars each
    model.answer = lambda request: "\n\n".join(paragraphs)
    assert (
        post(client, bot, *webhook_callback(webhook_message("t-5", "c-5", "u-5", "everything"), SECRET)).status_code
        == 202
    )
    row = wait_for_status("t-5", MessageStatus.REPLIED)
    delivered = receiver.delivered
    assert len(delivered) == row.parts_sent == 2
    assert [(r["part"], r["parts"]) for r in delivered] == [(1, 2), (2, 2)]
    assert all(len(r["text"]) <= 16000 for r in delivered)
    assert "".join(r["text"] for r in delivered) == "\n\n".join(paragraphs)


def test_a_busy_receiver_is_retried_after_its_retry_after(client, bot, receiver, model, celery_worker):
    receiver.plan(REPLY_PATH, Fault(503, {"error": "maintenance"}, headers={"Retry-After": "1"}))
    assert (
        post(client, bot, *webhook_callback(webhook_message("t-6", "c-6", "u-6", "patience"), SECRET)).status_code
        == 202
    )
    attempts = receiver.wait_for(REPLY_PATH, 2, timeout=30)
    row = wait_for_status("t-6", MessageStatus.REPLIED)
    assert attempts[1].at - attempts[0].at >= 0.9  # the receiver's Retry-After, not an immediate retry
    assert attempts[0].headers["idempotency-key"] == attempts[1].headers["idempotency-key"]
    assert [r["text"] for r in receiver.delivered] == ["[m1] patience (history=0)"]
    assert len(model.received(r"/chat/completions")) == 1 and row.parts_sent == 1
