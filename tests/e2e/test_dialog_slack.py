"""The whole loop on Slack: signed Events API callbacks in through the real view, a real
Celery worker, the model behind a fake OpenAI-compatible server, and the answer posted
in the message's thread at a fake Slack Web API."""

from __future__ import annotations

import time

import pytest

from bots.models import Bot
from channels_app.adapters.slack.adapter import unescape
from channels_app.models import InboundMessage, MessageStatus
from routing.models import ModelBackend
from tests.fakes.model import FakeModel
from tests.fakes.slack import DEFAULT_BOT_TOKEN, FakeSlack, slack_callback, slack_event

pytestmark = pytest.mark.slow

SIGNING_SECRET = "e2e-signing-secret"
POST_MESSAGE = r"/api/chat\.postMessage$"


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def bot(transactional_db, slack, model) -> Bot:
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    return Bot.objects.create(
        name="slack-helpdesk",
        platform="slack",
        app_secret=SIGNING_SECRET,
        token=DEFAULT_BOT_TOKEN,
        api_base_url=slack.url,
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


def test_one_direct_message_gets_exactly_one_reply_in_its_thread(client, bot, slack, celery_worker):
    ts = "1732546000.000100"
    message = slack_event("message", "D0DIRECT01", "U0ALICE001", "hello &amp; welcome", ts=ts)
    first_at = int(time.time())
    assert post(client, bot, *slack_callback(message, SIGNING_SECRET, timestamp=first_at)).status_code == 200

    [sent] = slack.wait_for(POST_MESSAGE, 1)
    assert sent.headers["authorization"] == f"Bearer {DEFAULT_BOT_TOKEN}"
    assert sent.json() == {"channel": "D0DIRECT01", "text": "[m1] hello &amp; welcome (history=0)", "thread_ts": ts}
    row = wait_for_status(f"D0DIRECT01:{ts}", MessageStatus.REPLIED)
    assert row.parts_sent == 1

    # Slack's retry (signed anew, 3 s later) and the app_mention twin of the same message.
    retry = post(client, bot, *slack_callback(message, SIGNING_SECRET, timestamp=first_at + 3, retry_num=1))
    assert retry.status_code == 200 and retry["X-Slack-No-Retry"] == "1"
    twin = slack_event("app_mention", "D0DIRECT01", "U0ALICE001", "hello &amp; welcome", ts=ts)
    assert post(client, bot, *slack_callback(twin, SIGNING_SECRET)).status_code == 200
    time.sleep(1.5)  # room for a wrong second reply to arrive
    assert len(slack.received(POST_MESSAGE)) == 1
    assert InboundMessage.objects.count() == 1


def test_forged_and_replayed_callbacks_get_no_reply(client, bot, slack, celery_worker):
    forged = slack_event("message", "D0DIRECT01", "U0MALLORY1", "forged question", ts="1732546100.000100")
    assert post(client, bot, *slack_callback(forged, "a guessed secret")).status_code == 401

    mention = slack_event(
        "app_mention", "C0GENERAL1", "U0ALICE001", "<@U0FAKEBOT1> real question", ts="1732546200.000200"
    )
    signed = slack_callback(mention, SIGNING_SECRET)
    assert post(client, bot, *signed).status_code == 200
    [sent] = slack.wait_for(POST_MESSAGE, 1)
    assert sent.json() == {
        "channel": "C0GENERAL1",
        "text": "[m1] real question (history=0)",
        "thread_ts": "1732546200.000200",
    }

    assert post(client, bot, *signed).status_code == 200  # the captured request, sent again: a re-delivery
    stale = slack_callback(
        slack_event("message", "D0DIRECT01", "U0ALICE001", "old", ts="1732546300.000300"),
        SIGNING_SECRET,
        timestamp=int(time.time()) - 600,
    )
    assert post(client, bot, *stale).status_code == 401
    time.sleep(1.5)
    assert len(slack.received(POST_MESSAGE)) == 1
    assert list(InboundMessage.objects.values_list("platform_message_id", flat=True)) == [
        "C0GENERAL1:1732546200.000200"
    ]


def test_a_long_answer_arrives_whole_in_several_messages_of_one_thread(client, bot, slack, model, celery_worker):
    paragraphs = [f"Part {n}: " + "words <and> more & more " * 70 for n in range(4)]  # ~1,750 chars each
    model.answer = lambda request: "\n\n".join(paragraphs)
    ts = "1732546400.000400"
    message = slack_event("message", "D0DIRECT01", "U0ALICE001", "tell me everything", ts=ts)
    assert post(client, bot, *slack_callback(message, SIGNING_SECRET)).status_code == 200
    row = wait_for_status(f"D0DIRECT01:{ts}", MessageStatus.REPLIED)
    sent = slack.received(POST_MESSAGE)
    assert len(sent) == row.parts_sent >= 2
    assert {r.json()["thread_ts"] for r in sent} == {ts}
    texts = [unescape(r.json()["text"]) for r in sent]
    assert all(len(text) <= 4000 for text in texts)
    assert "".join(texts) == "\n\n".join(paragraphs)


def test_a_channel_the_bot_was_removed_from_fails_once_with_the_fix(client, bot, slack, celery_worker):
    slack.channels_without_bot.add("C0PRIVATE1")
    mention = slack_event("app_mention", "C0PRIVATE1", "U0ALICE001", "<@U0FAKEBOT1> hi", ts="1732546500.000500")
    assert post(client, bot, *slack_callback(mention, SIGNING_SECRET)).status_code == 200
    row = wait_for_status("C0PRIVATE1:1732546500.000500", MessageStatus.FAILED)
    assert "not_in_channel" in row.error and "/invite" in row.error
    time.sleep(1.0)
    assert len(slack.received(POST_MESSAGE)) == 1  # permanent: not retried
