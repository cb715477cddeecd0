"""Slack: the signature against the published vector, callbacks through the real view
into PostgreSQL and Redis, and chat.postMessage against the fake Slack Web API."""

from __future__ import annotations

import copy
import json
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from bots.models import Bot
from channels_app.adapters.slack.adapter import SlackAdapter, escape, signature, unescape
from channels_app.crypto.tests.vectors import vector
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.registry import adapter_for
from tests.fakes.server import Fault
from tests.fakes.slack import DEFAULT_BOT_TOKEN, FakeSlack, slack_callback, slack_event, slack_signature

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SIGNING_SECRET = "fixture-signing-secret-0123456789"
BOT_USER = "U0SWITCHBD"  # the bot user the fixtures' authorizations name
DM_MESSAGE_ID = "D0DIRECT01:1732545119.000200"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture
def make_slack_bot(make_bot):
    def make(**fields) -> Bot:
        return make_bot(
            **{"platform": "slack", "extra": {}, "app_secret": SIGNING_SECRET, "token": DEFAULT_BOT_TOKEN, **fields}
        )

    return make


@pytest.fixture
def bot(make_slack_bot) -> Bot:
    return make_slack_bot()


def post(client, bot: Bot, headers: dict[str, str], body: bytes, platform: str | None = None):
    headers = dict(headers)
    content_type = headers.pop("Content-Type", "application/json")
    path = f"/callback/{platform}/{bot.uuid}/" if platform else bot.callback_path
    return client.post(path, data=body, content_type=content_type, headers=headers)


def deliver(client, bot: Bot, payload: dict, **signing):
    return post(client, bot, *slack_callback(payload, SIGNING_SECRET, **signing))


def rows(bot: Bot):
    return InboundMessage.objects.filter(bot=bot)


def test_the_adapter_is_registered():
    assert adapter_for("slack") is SlackAdapter


# -- the signature ------------------------------------------------------------------------


def test_signature_matches_the_published_vector_v28():
    inputs, expected = vector("v28")["inputs"], vector("v28")["expected"]
    assert signature(inputs["signing_secret"], inputs["timestamp"], inputs["body"].encode()) == expected["signature"]


def test_the_published_vector_v28_passes_the_views_signature_check(client, make_slack_bot, settings, caplog):
    # The vector is a slash command (a form body) from 2018: with the window frozen open,
    # its signature must be accepted, and only the body refused, since we serve the
    # Events API only. One changed byte must fail the signature instead.
    inputs, expected = vector("v28")["inputs"], vector("v28")["expected"]
    settings.CALLBACK_TIMESTAMP_WINDOW = 10**10
    bot = make_slack_bot(app_secret=inputs["signing_secret"])
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": inputs["timestamp"],
        "X-Slack-Signature": expected["signature"],
    }
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        accepted_signature = post(client, bot, headers, inputs["body"].encode())
        tampered = post(client, bot, headers, inputs["body"].replace("text=", "text=x").encode())
    assert accepted_signature.status_code == 400
    assert "refused (malformed): the body is not JSON" in caplog.text
    assert "not slash commands" in caplog.text
    assert tampered.status_code == 401
    assert "X-Slack-Signature does not match" in caplog.text
    assert not rows(bot).exists()


def test_the_fakes_independent_signature_agrees_with_ours():
    body = json.dumps({"text": "naïve ✓ <@U1>"}).encode()
    assert slack_signature("sécret", "1700000000", body) == signature("sécret", "1700000000", body)


def test_escape_and_unescape_touch_only_slacks_three_characters():
    assert escape("a & b <!channel> <@U1> > 'q' \"x\"") == "a &amp; b &lt;!channel&gt; &lt;@U1&gt; &gt; 'q' \"x\""
    assert unescape("Q&amp;A &lt;3 &gt; &amp;lt; &quot;") == "Q&A <3 > &lt; &quot;"


# -- url_verification ---------------------------------------------------------------------


def test_url_verification_answers_the_challenge_once_signed(client, bot):
    response = deliver(client, bot, fixture("url_verification"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert not rows(bot).exists()


def test_url_verification_with_a_wrong_signature_gets_no_challenge(client, bot):
    headers, body = slack_callback(fixture("url_verification"), "another app's signing secret")
    response = post(client, bot, headers, body)
    assert response.status_code == 401
    assert b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" not in response.content


def test_url_verification_without_a_challenge_is_malformed(client, bot):
    payload = {**fixture("url_verification"), "challenge": None}
    assert deliver(client, bot, payload).status_code == 400


# -- messages in --------------------------------------------------------------------------


def test_a_direct_message_is_recorded_with_its_channel_and_ts_as_the_id(client, bot):
    response = deliver(client, bot, fixture("message_im"))
    assert response.status_code == 200
    assert response.content == b""
    assert "X-Slack-No-Retry" not in response
    row = rows(bot).get()
    assert row.status == MessageStatus.RECEIVED
    assert row.platform_message_id == DM_MESSAGE_ID
    assert (row.chat_id, row.chat_type, row.sender_id) == ("D0DIRECT01", "p2p", "U0ALICE001")
    assert row.text == "What is the capital of Australia? Q&A, <3"  # Slack's entities decoded
    assert row.mentioned is True
    assert row.raw["reply_context"] == {"channel": "D0DIRECT01", "thread_ts": "1732545119.000200"}
    assert row.raw["event"]["event_id"] == "Ev0FIXTURE0IM"
    # The envelope's legacy verification token is not stored.
    assert "fixture-legacy-verification-token" not in json.dumps(row.raw)


def test_an_app_mention_in_a_channel_is_a_group_message_without_the_leading_mention(client, bot):
    assert deliver(client, bot, fixture("app_mention")).status_code == 200
    row = rows(bot).get()
    assert (row.chat_id, row.chat_type, row.mentioned) == ("C0GENERAL1", "group", True)
    assert row.platform_message_id == "C0GENERAL1:1732545180.000300"
    assert row.text == "summarise what <@U0BOB00001> proposed"
    assert row.raw["reply_context"] == {"channel": "C0GENERAL1", "thread_ts": "1732545180.000300"}


def test_an_app_mention_inside_a_thread_is_answered_in_that_thread(client, bot):
    payload = fixture("app_mention")
    payload["event"]["thread_ts"] = "1732545000.000100"
    assert deliver(client, bot, payload).status_code == 200
    assert rows(bot).get().raw["reply_context"]["thread_ts"] == "1732545000.000100"


@pytest.mark.parametrize(
    ("event_type", "text", "bot_user_id", "expected"),
    [
        ("app_mention", "<@U0SWITCHBD|switchboard>: hi there", BOT_USER, "hi there"),
        (
            "app_mention",
            "<@U0BOB00001> wants <@U0SWITCHBD> to answer",
            BOT_USER,
            "<@U0BOB00001> wants <@U0SWITCHBD> to answer",
        ),
        ("app_mention", "<@U0WHOEVER> hi", None, "hi"),  # unknown bot id: the leading mention is the bot's
        ("message", "<@U0SWITCHBD> hi", BOT_USER, "hi"),
        ("message", "<@U0BOB00001> said hi", None, "<@U0BOB00001> said hi"),
    ],
    ids=["bot-with-name", "someone-else-first", "unknown-bot-id", "dm-to-bot", "dm-unknown-bot-id"],
)
def test_only_the_bots_leading_mention_is_dropped(client, bot, event_type, text, bot_user_id, expected):
    channel = "C0GENERAL1" if event_type == "app_mention" else "D0DIRECT01"
    payload = slack_event(event_type, channel, "U0ALICE001", text, bot_user_id=bot_user_id or "")
    if bot_user_id is None:
        del payload["authorizations"]
    assert deliver(client, bot, payload).status_code == 200
    assert rows(bot).get().text == expected


def test_the_configured_bot_user_id_wins_over_the_envelopes(client, make_slack_bot):
    bot = make_slack_bot(extra={"bot_user_id": "U0CONFIGRD"})
    payload = slack_event("app_mention", "C0GENERAL1", "U0ALICE001", "<@U0CONFIGRD> hi", bot_user_id="U0OTHER001")
    assert deliver(client, bot, payload).status_code == 200
    assert rows(bot).get().text == "hi"
    own = slack_event("message", "D0DIRECT01", "U0CONFIGRD", "my own words", bot_user_id="U0OTHER001")
    assert deliver(client, bot, own).status_code == 200
    assert rows(bot).count() == 1


def _own_message():
    payload = fixture("message_im")
    payload["event"]["user"] = BOT_USER  # no bot_id: only the user id tells it is ours
    return payload


def _bare_mention():
    payload = fixture("app_mention")
    payload["event"]["text"] = "<@U0SWITCHBD>  "
    return payload


def _group_dm():
    payload = fixture("message_im")
    payload["event"].update(channel="G0MPIM0001", channel_type="mpim")
    return payload


def _other_event():
    payload = fixture("message_im")
    payload["event"] = {
        "type": "reaction_added",
        "user": "U0ALICE001",
        "reaction": "thumbsup",
        "item": {"type": "message", "channel": "D0DIRECT01", "ts": "1732545119.000200"},
        "event_ts": "1732545300.000700",
    }
    return payload


IGNORED = {
    "channel message without a mention": lambda: fixture("message_channel"),
    "edited message": lambda: fixture("message_changed"),
    "the bot's own reply": lambda: fixture("bot_message_im"),
    "the bot's user without bot_id": _own_message,
    "bare mention": _bare_mention,
    "group DM message": _group_dm,
    "reaction": _other_event,
    "app_rate_limited": lambda: fixture("app_rate_limited"),
}


@pytest.mark.parametrize("case", IGNORED)
def test_events_without_a_question_are_acknowledged_and_not_recorded(client, bot, case):
    response = deliver(client, bot, IGNORED[case]())
    assert response.status_code == 200
    assert response.content == b""
    assert not rows(bot).exists()


def test_a_retry_of_a_recorded_event_is_acknowledged_once_and_told_to_stop(client, bot):
    first_at = int(time.time())
    assert deliver(client, bot, fixture("message_im"), timestamp=first_at).status_code == 200
    # Slack signs each attempt anew; the first retry follows a timeout, 3 s later.
    retry = deliver(client, bot, fixture("message_im"), timestamp=first_at + 3, retry_num=1)
    assert retry.status_code == 200
    assert retry["X-Slack-No-Retry"] == "1"
    assert rows(bot).count() == 1


def test_a_retry_whose_first_delivery_never_arrived_is_recorded(client, bot):
    # Slack retries after connection_failed and http_error too: then the retry is the
    # only copy, and dropping it would lose the message.
    response = deliver(client, bot, fixture("message_im"), retry_num=2)
    assert response.status_code == 200
    assert rows(bot).get().platform_message_id == DM_MESSAGE_ID


def test_a_dm_mention_delivered_as_message_im_and_app_mention_is_recorded_once(client, bot):
    ts = "1732546000.000100"
    as_message = slack_event("message", "D0DIRECT01", "U0ALICE001", "<@U0FAKEBOT1> hi", ts=ts)
    as_mention = slack_event("app_mention", "D0DIRECT01", "U0ALICE001", "<@U0FAKEBOT1> hi", ts=ts)
    assert as_message["event_id"] != as_mention["event_id"]
    assert deliver(client, bot, as_message).status_code == 200
    assert deliver(client, bot, as_mention).status_code == 200
    row = rows(bot).get()
    assert (row.platform_message_id, row.chat_type, row.text) == (f"D0DIRECT01:{ts}", "p2p", "hi")


def test_the_same_signed_request_twice_is_a_redelivery(client, bot):
    # The signature covers the body: the same one again can only carry the same message.
    headers, body = slack_callback(fixture("message_im"), SIGNING_SECRET)
    assert post(client, bot, headers, body).status_code == 200
    assert post(client, bot, headers, body).status_code == 200
    assert rows(bot).count() == 1


def test_a_request_refused_for_its_body_does_not_burn_its_signature(client, bot):
    # The view releases the nonce of a refused request, so Slack's retry is not a "replay".
    headers, body = slack_callback(b"{not json", SIGNING_SECRET)
    assert post(client, bot, headers, body).status_code == 400
    assert post(client, bot, headers, body).status_code == 400


# -- the bad corpus: 4xx, never 500, nothing recorded, and refused for the right reason ----


def _signed(payload: dict | bytes | None = None, **signing) -> tuple[dict, bytes]:
    return slack_callback(fixture("message_im") if payload is None else payload, SIGNING_SECRET, **signing)


def _forged():
    headers, body = _signed()
    return {**headers, "X-Slack-Signature": "v0=" + "0" * 64}, body


def _body_changed_after_signing():
    headers, body = _signed()
    return headers, body.replace(b"Australia", b"Austria")


def _without(header: str):
    headers, body = _signed()
    del headers[header]
    return headers, body


def _missing_event_field(field: str):
    payload = fixture("message_im")
    if field == "event_id":
        del payload["event_id"]
    else:
        del payload["event"][field]
    return _signed(payload)


BAD_CORPUS = {
    "forged signature": (_forged, 401, "X-Slack-Signature does not match"),
    "another app's secret": (
        lambda: slack_callback(fixture("message_im"), "not our secret"),
        401,
        "X-Slack-Signature does not match",
    ),
    "body changed after signing": (_body_changed_after_signing, 401, "X-Slack-Signature does not match"),
    "signature header missing": (lambda: _without("X-Slack-Signature"), 401, "X-Slack-Signature is missing"),
    "timestamp header missing": (lambda: _without("X-Slack-Request-Timestamp"), 401, "is missing"),
    "stale timestamp": (lambda: _signed(timestamp=int(time.time()) - 301 - 5), 401, "refused (stale_timestamp)"),
    "timestamp from the future": (lambda: _signed(timestamp=int(time.time()) + 3600), 401, "refused (stale_timestamp)"),
    "timestamp not a number": (lambda: _signed(timestamp="1e9"), 400, "not a number of seconds"),
    "malformed json": (lambda: _signed(b'{"type": "event_callback", '), 400, "the body is not JSON"),
    "json but not an object": (lambda: _signed(b'["event_callback"]'), 400, "not an object"),
    "no type": (lambda: _signed({"event_id": "Ev1", "event": {}}), 400, "the body has no type"),
    "no event_id": (lambda: _missing_event_field("event_id"), 400, "without an event object or an event_id"),
    "event not an object": (
        lambda: _signed({**fixture("message_im"), "event": "message"}),
        400,
        "without an event object",
    ),
    "message without channel": (lambda: _missing_event_field("channel"), 400, "without user, channel or ts"),
    "message without ts": (lambda: _missing_event_field("ts"), 400, "without user, channel or ts"),
}


@pytest.mark.parametrize("case", BAD_CORPUS)
def test_bad_corpus_is_refused_for_the_right_reason(client, bot, caplog, case):
    build, status, reason = BAD_CORPUS[case]
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, bot, *build())
    assert response.status_code == status
    assert reason in caplog.text
    assert not rows(bot).exists()


def test_a_bot_without_signing_secret_refuses_everything(client, make_slack_bot, caplog):
    bot = make_slack_bot(app_secret="")
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = deliver(client, bot, fixture("message_im"))
    assert response.status_code == 401
    assert "this bot has no Signing Secret" in caplog.text
    assert not rows(bot).exists()


def test_an_oversized_body_is_refused_with_413(client, bot):
    payload = fixture("message_im")
    payload["event"]["text"] = "x" * settings.CALLBACK_MAX_BODY_BYTES
    assert deliver(client, bot, payload).status_code == 413
    assert not rows(bot).exists()


def test_an_unknown_bot_is_404(client, db):
    unknown = Bot(platform="slack")  # unsaved: its uuid is in no row
    assert deliver(client, unknown, fixture("message_im")).status_code == 404
    assert not InboundMessage.objects.exists()


def test_a_bot_of_another_platform_is_404(client, make_bot):
    webhook_bot = make_bot(
        platform="webhook", app_secret=SIGNING_SECRET, extra={"outbound_url": "http://127.0.0.1:9/replies"}
    )
    response = post(client, webhook_bot, *slack_callback(fixture("message_im"), SIGNING_SECRET), platform="slack")
    assert response.status_code == 404
    assert not InboundMessage.objects.exists()


def test_a_disabled_bot_is_404(client, make_slack_bot):
    bot = make_slack_bot(enabled=False)
    assert deliver(client, bot, fixture("message_im")).status_code == 404
    assert not rows(bot).exists()


# -- chat.postMessage ---------------------------------------------------------------------


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def sending_bot(make_slack_bot, slack) -> Bot:
    return make_slack_bot(api_base_url=slack.url)


@pytest.fixture
def http():
    with httpx.Client(timeout=2.0) as client:
        yield client


def reply(text: str = "Canberra.", channel: str = "D0DIRECT01", thread_ts: str | None = "1732545119.000200"):
    context = {"channel": channel, **({"thread_ts": thread_ts} if thread_ts else {})}
    return OutboundReply(
        chat_id=channel,
        chat_type="p2p",
        sender_id="U0ALICE001",
        text=text,
        reply_context=context,
        idempotency_key="sb-0-1-0",
    )


def test_default_api_base_is_slack_and_a_bot_may_override_it(make_slack_bot):
    assert SlackAdapter(make_slack_bot()).api_base == "https://slack.com"
    assert SlackAdapter(make_slack_bot(api_base_url="https://slack-gov.com/")).api_base == "https://slack-gov.com"


def test_a_reply_is_posted_in_the_thread_with_the_bot_token(slack, sending_bot, http):
    SlackAdapter(sending_bot).send(reply("Canberra — 堪培拉."), http)
    [request] = slack.received()
    assert (request.method, request.path) == ("POST", "/api/chat.postMessage")
    assert request.headers["authorization"] == f"Bearer {DEFAULT_BOT_TOKEN}"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.json() == {"channel": "D0DIRECT01", "text": "Canberra — 堪培拉.", "thread_ts": "1732545119.000200"}
    assert [(m["channel"], m["thread_ts"], m["text"]) for m in slack.sent] == [
        ("D0DIRECT01", "1732545119.000200", "Canberra — 堪培拉.")
    ]


def test_without_a_thread_ts_the_reply_is_a_new_message_in_the_channel(slack, sending_bot, http):
    SlackAdapter(sending_bot).send(reply(channel="C0GENERAL1", thread_ts=None), http)
    assert slack.received()[0].json() == {"channel": "C0GENERAL1", "text": "Canberra."}


def test_the_models_markup_cannot_notify_a_channel_or_a_person(slack, sending_bot, http):
    SlackAdapter(sending_bot).send(reply("<!channel> ping <@U0BOSS0001> & <https://x.example|here>"), http)
    assert slack.sent[0]["text"] == "&lt;!channel&gt; ping &lt;@U0BOSS0001&gt; &amp; &lt;https://x.example|here&gt;"


def test_a_longest_reply_stays_whole_even_when_escaping_grows_it(slack, sending_bot, http):
    text = "&" * SlackAdapter.max_reply_length  # the worst case: each character becomes five
    SlackAdapter(sending_bot).send(reply(text), http)
    assert slack.sent[0]["truncated"] is False
    assert unescape(slack.sent[0]["text"]) == text


def test_rate_limited_is_transient_with_slacks_retry_after(slack, sending_bot, http):
    slack.rate_limit(times=1, retry_after=7)
    with pytest.raises(TransportError) as error:
        SlackAdapter(sending_bot).send(reply(), http)
    assert (error.value.permanent, error.value.retry_after) == (False, 7.0)
    assert slack.sent == []
    SlackAdapter(sending_bot).send(reply(), http)  # the limit has passed
    assert len(slack.sent) == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault(200, {"ok": False, "error": "ratelimited"}),
        Fault(200, {"ok": False, "error": "internal_error"}),
        Fault(200, {"ok": False, "error": "service_unavailable"}),
        Fault(500, {"ok": False, "error": "fatal_error"}),
        Fault(503, "<html><body>503 Service Unavailable</body></html>"),
    ],
    ids=["ratelimited-in-200", "internal_error", "service_unavailable", "http-500", "proxy-503"],
)
def test_slacks_own_trouble_is_transient(slack, sending_bot, http, fault):
    slack.plan(r"chat\.postMessage", fault)
    with pytest.raises(TransportError) as error:
        SlackAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is False
    assert error.value.retry_after is None


def test_a_timeout_is_transient(slack, sending_bot):
    slack.plan(r"chat\.postMessage", Fault(delay=0.6, passthrough=True))
    with httpx.Client(timeout=0.2) as impatient, pytest.raises(TransportError) as error:
        SlackAdapter(sending_bot).send(reply(), impatient)
    assert error.value.permanent is False


def test_an_unreachable_slack_is_transient(make_slack_bot, http):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransportError) as error:
        SlackAdapter(make_slack_bot(api_base_url=f"http://127.0.0.1:{port}")).send(reply(), http)
    assert error.value.permanent is False


def test_a_wrong_token_is_permanent_and_not_repeated_in_the_error(slack, make_slack_bot, http):
    bot = make_slack_bot(api_base_url=slack.url, token="xoxb-outdated-token-42")
    with pytest.raises(TransportError) as error:
        SlackAdapter(bot).send(reply(), http)
    assert error.value.permanent is True
    assert "invalid_auth" in str(error.value) and "Bot User OAuth Token" in str(error.value)
    assert "xoxb-outdated-token-42" not in str(error.value)


def test_a_revoked_token_is_permanent(slack, sending_bot, http):
    slack.revoke(DEFAULT_BOT_TOKEN)
    with pytest.raises(TransportError, match="token_revoked.*reinstall") as error:
        SlackAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_a_channel_the_bot_is_not_in_is_permanent(slack, sending_bot, http):
    slack.channels_without_bot.add("C0PRIVATE1")
    with pytest.raises(TransportError, match="not_in_channel.*/invite") as error:
        SlackAdapter(sending_bot).send(reply(channel="C0PRIVATE1"), http)
    assert error.value.permanent is True
    assert slack.sent == []


@pytest.mark.parametrize("error_code", ["channel_not_found", "account_inactive", "missing_scope", "msg_too_long"])
def test_other_refusals_are_permanent(slack, sending_bot, http, error_code):
    slack.plan(r"chat\.postMessage", Fault(200, {"ok": False, "error": error_code}))
    with pytest.raises(TransportError, match=error_code) as error:
        SlackAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_something_that_is_not_slacks_api_is_permanent(slack, sending_bot, http):
    slack.plan(r"chat\.postMessage", Fault(404, "<html><body>Not Found</body></html>"))
    with pytest.raises(TransportError, match="API base URL") as error:
        SlackAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_a_bot_without_a_token_fails_permanently_without_calling_slack(slack, make_slack_bot, http):
    with pytest.raises(TransportError, match="no bot token") as error:
        SlackAdapter(make_slack_bot(api_base_url=slack.url, token="")).send(reply(), http)
    assert error.value.permanent is True
    assert slack.received() == []


def test_a_recorded_message_carries_what_send_needs(client, bot, slack, http):
    """The reply_context stored by parse is exactly what send posts with."""
    payload = copy.deepcopy(fixture("app_mention"))
    payload["event"]["thread_ts"] = "1732545000.000100"
    assert deliver(client, bot, payload).status_code == 200
    row = rows(bot).get()
    bot.api_base_url = slack.url
    SlackAdapter(bot).send(
        OutboundReply(
            chat_id=row.chat_id,
            chat_type=row.chat_type,
            sender_id=row.sender_id,
            text="done",
            reply_context=row.raw["reply_context"],
            idempotency_key="k",
        ),
        http,
    )
    assert slack.received()[0].json() == {"channel": "C0GENERAL1", "text": "done", "thread_ts": "1732545000.000100"}
