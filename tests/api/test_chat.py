"""POST /api/v1/chat: one dialog turn through the bot's routing and context."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from bots.models import ApiKey
from routing.backends import openai as openai_backend
from routing.models import RoutingRule
from tests.api.conftest import CHAT_URL, call
from tests.fakes.server import Fault, Response

pytestmark = pytest.mark.django_db


def test_a_turn_is_answered_through_the_bots_routing_and_remembered(api, issue_key, chat_bot, fake_model):
    _, key = issue_key()

    first = call(api, key, {"bot": "support", "text": "hello", "user": "u-1"})
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["answer"] == "[m-main] hello (history=0)"
    assert (body["bot"], body["backend"], body["rule"], body["rule_id"]) == (
        "support",
        "main",
        "the bot's default backend",
        None,
    )
    assert body["conversation"] == "u-1"
    assert body["latency_ms"] >= body["model_ms"] > 0

    second = call(api, key, {"bot": "support", "text": "my invoice is wrong", "user": "u-1"})
    assert second.status_code == 200, second.content
    body = second.json()
    rule = RoutingRule.objects.get(pattern="invoice")
    # The keyword rule picked the billing model, and the first turn went along as context.
    assert body["answer"] == "[m-billing] my invoice is wrong (history=2)"
    assert (body["backend"], body["rule_id"]) == ("billing", rule.pk)
    assert body["rule"] == f"rule {rule}"
    sent = fake_model.received("/chat/completions")[-1].json()["messages"]
    assert [m["content"] for m in sent] == ["hello", "[m-main] hello (history=0)", "my invoice is wrong"]


def test_conversations_and_users_have_their_own_context(api, issue_key, chat_bot):
    _, key = issue_key()
    call(api, key, {"bot": "support", "text": "one", "user": "u-1", "conversation": "c-1"})

    elsewhere = call(api, key, {"bot": "support", "text": "two", "user": "u-1", "conversation": "c-2"})
    same = call(api, key, {"bot": "support", "text": "three", "user": "u-1", "conversation": "c-1"})
    other_user = call(api, key, {"bot": "support", "text": "four", "user": "u-2", "conversation": "c-1"})

    assert elsewhere.json()["answer"].endswith("(history=0)")
    assert same.json()["answer"].endswith("(history=2)")
    assert other_user.json()["answer"].endswith("(history=0)")


def test_another_key_cannot_read_a_conversation_by_its_ids(api, issue_key, chat_bot):
    _, first_key = issue_key(name="first")
    _, second_key = issue_key(name="second")
    call(api, first_key, {"bot": "support", "text": "secret plans", "user": "u-1"})

    response = call(api, second_key, {"bot": "support", "text": "what did I say?", "user": "u-1"})

    assert response.json()["answer"].endswith("(history=0)")


def test_the_bot_can_be_named_by_uuid(api, issue_key, chat_bot):
    _, key = issue_key()
    response = call(api, key, {"bot": str(chat_bot.uuid), "text": "hi", "user": "u-1"})
    assert response.status_code == 200 and response.json()["bot"] == "support"


def test_chat_type_reaches_the_routing_rules(api, issue_key, make_bot, backend):
    from routing.models import ModelBackend

    groups = ModelBackend.objects.create(name="groups", kind="echo")
    bot = make_bot(name="team", default_backend=backend)
    RoutingRule.objects.create(bot=bot, match="chat_type", pattern="group", backend=groups)
    _, key = issue_key()

    group = call(api, key, {"bot": "team", "text": "hi", "user": "u", "chat_type": "group"})
    p2p = call(api, key, {"bot": "team", "text": "hi", "user": "u"})

    assert (group.json()["backend"], p2p.json()["backend"]) == ("groups", "echo")


def error_of(response) -> dict:
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    return response.json()["error"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"bot", "text", "user"}),
        ({"bot": "support", "text": "", "user": "u"}, {"text"}),
        ({"bot": "support", "text": "hi", "user": "u", "chat_type": "channel"}, {"chat_type"}),
        ({"bot": "support", "text": "hi", "user": "u", "chat-type": "group"}, {"chat-type"}),
        ({"bot": "support", "text": "x" * 16001, "user": "u"}, {"text"}),
        ({"bot": ["support"], "text": "hi", "user": "u"}, {"bot"}),
    ],
)
def test_a_malformed_body_is_refused_with_the_fields_at_fault(api, issue_key, chat_bot, fake_model, body, fields):
    _, key = issue_key()
    response = call(api, key, body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert set(error["fields"]) == fields
    assert all(name in error["message"] for name in fields)
    assert not fake_model.received()


def test_a_body_that_is_not_json_is_refused(api, issue_key, chat_bot):
    _, key = issue_key()
    broken = api.post(CHAT_URL, "{not json", content_type="application/json", HTTP_AUTHORIZATION=f"Api-Key {key}")
    form = api.post(CHAT_URL, {"bot": "support"}, HTTP_AUTHORIZATION=f"Api-Key {key}")  # multipart
    listed = call(api, key, ["support"])

    assert (broken.status_code, error_of(broken)["code"]) == (400, "parse_error")
    assert (form.status_code, error_of(form)["code"]) == (415, "unsupported_media_type")
    assert (listed.status_code, error_of(listed)["code"]) == (400, "invalid_request")


def test_an_unknown_bot_is_404(api, issue_key, chat_bot):
    _, key = issue_key()
    response = call(api, key, {"bot": "Support", "text": "hi", "user": "u"})
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "unknown_bot" and "'Support'" in error["message"]


def test_a_disabled_bot_is_refused(api, issue_key, chat_bot):
    chat_bot.enabled = False
    chat_bot.save()
    _, key = issue_key()
    response = call(api, key, {"bot": "support", "text": "hi", "user": "u"})
    assert (response.status_code, error_of(response)["code"]) == (409, "bot_disabled")


def test_a_failing_model_is_502_and_the_turn_is_not_remembered(api, issue_key, chat_bot, fake_model, monkeypatch):
    monkeypatch.setattr(openai_backend, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    fake_model.plan(r"/chat/completions", *[Fault(500, {"error": {"message": "boom"}})] * 4)
    _, key = issue_key()

    response = call(api, key, {"bot": "support", "text": "hi", "user": "u"})

    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "model_failed" and "model backend failed" in error["message"]
    assert fake_model.url.split("//")[1] not in error["message"]  # internal addresses stay in the log
    assert len(fake_model.received("/chat/completions")) == 4
    again = call(api, key, {"bot": "support", "text": "hi again", "user": "u"})
    assert again.json()["answer"] == "[m-main] hi again (history=0)"


def test_no_backend_is_503(api, issue_key, make_bot):
    make_bot(name="unrouted")
    _, key = issue_key()
    response = call(api, key, {"bot": "unrouted", "text": "hi", "user": "u"})
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "no_backend" and "default backend" in error["message"]


def test_a_model_slower_than_the_timeout_is_504_in_time(api, issue_key, chat_bot, fake_model, settings):
    settings.CHAT_API_TIMEOUT = 0.5
    fake_model.delay = 3.0
    _, key = issue_key()

    started = time.monotonic()
    response = call(api, key, {"bot": "support", "text": "hi", "user": "u"})
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert error_of(response)["code"] == "model_timeout"
    assert "0.5 s" in error_of(response)["message"]
    # Not retried nor handed to another backend after the deadline: one request, on time.
    assert elapsed < 1.5
    assert len(fake_model.received("/chat/completions")) == 1


def test_a_model_asking_to_wait_past_the_deadline_ends_the_turn_at_once(api, issue_key, chat_bot, fake_model, settings):
    settings.CHAT_API_TIMEOUT = 3
    fake_model.plan_responses(Response(429, {"error": {"message": "slow down"}}, {"Retry-After": "5"}))
    _, key = issue_key()

    started = time.monotonic()
    response = call(api, key, {"bot": "support", "text": "hi", "user": "u"})

    assert response.status_code == 504 and error_of(response)["code"] == "model_timeout"
    assert time.monotonic() - started < 1.5
    assert len(fake_model.received("/chat/completions")) == 1


def test_requests_are_throttled_per_key(api, issue_key, make_bot, backend, settings):
    settings.CHAT_API_RATE = "2/min"
    make_bot(name="echoer", default_backend=backend)
    _, key = issue_key()
    _, other_key = issue_key(name="other")
    body = {"bot": "echoer", "text": "hi", "user": "u"}

    statuses = [call(api, key, body).status_code for _ in range(2)]
    throttled = call(api, key, body)
    other = call(api, other_key, body)

    assert statuses == [200, 200]
    assert throttled.status_code == 429
    assert error_of(throttled)["code"] == "throttled"
    assert 0 < int(throttled["Retry-After"]) <= 60
    assert other.status_code == 200


def test_a_rotated_key_works_until_its_grace_period_ends(api, issue_key, make_bot, backend):
    make_bot(name="echoer", default_backend=backend)
    old, old_key = issue_key()
    new, new_key = old.rotate(grace=timedelta(hours=1))
    body = {"bot": "echoer", "text": "hi", "user": "u"}

    assert call(api, old_key, body).status_code == 200
    assert call(api, new_key, body).status_code == 200

    ApiKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = call(api, old_key, body)
    assert refused.status_code == 401
    error = error_of(refused)
    assert error["code"] == "key_expired" and "rotated" in error["message"]
    assert call(api, new_key, body).status_code == 200


def test_use_is_recorded_at_most_once_a_minute(api, issue_key, make_bot, backend):
    make_bot(name="echoer", default_backend=backend)
    row, key = issue_key()
    body = {"bot": "echoer", "text": "hi", "user": "u"}

    call(api, key, body, REMOTE_ADDR="192.0.2.1")
    row.refresh_from_db()
    first = row.last_used_at
    assert first is not None and row.last_used_ip == "192.0.2.1"

    call(api, key, body, REMOTE_ADDR="192.0.2.2")
    row.refresh_from_db()
    assert (row.last_used_at, row.last_used_ip) == (first, "192.0.2.1")

    ApiKey.objects.filter(pk=row.pk).update(last_used_at=first - timedelta(minutes=2))
    call(api, key, body, REMOTE_ADDR="192.0.2.2")
    row.refresh_from_db()
    assert row.last_used_at > first and row.last_used_ip == "192.0.2.2"
