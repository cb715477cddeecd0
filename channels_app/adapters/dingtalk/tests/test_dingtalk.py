"""DingTalk: the signature against an independently computed value, callbacks through
the real view into PostgreSQL and Redis, and sends against the fake DingTalk."""

from __future__ import annotations

import copy
import json
import logging
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django_redis import get_redis_connection

from bots.models import Bot
from channels_app import replay
from channels_app.adapters.dingtalk.adapter import (
    SESSION_WEBHOOK_MARGIN_MS,
    SIGNATURE_WINDOW_SECONDS,
    DingTalkAdapter,
    signature,
)
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.registry import adapter_for
from tests.fakes.dingtalk import FakeDingTalk, dingtalk_callback
from tests.fakes.server import Fault

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
APP_KEY = "dingk5xqkwsyt2rfk8bq"  # the fixtures' robotCode: an internal app's robotCode is its AppKey
APP_SECRET = "fixture-app-secret-never-logged"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def fresh(message: dict) -> dict:
    """A fixture as DingTalk would push it now: a new msgId and a live sessionWebhook."""
    message = copy.deepcopy(message)
    now_ms = int(time.time() * 1000)
    message.update(msgId=f"msg{uuid.uuid4().hex}", createAt=now_ms, sessionWebhookExpiredTime=now_ms + 5_400_000)
    return message


@pytest.fixture
def make_dingtalk_bot(make_bot):
    def make(**fields) -> Bot:
        return make_bot(**{"platform": "dingtalk", "extra": {}, "app_id": APP_KEY, "app_secret": APP_SECRET, **fields})

    return make


@pytest.fixture
def bot(make_dingtalk_bot) -> Bot:
    return make_dingtalk_bot()


def post(client, bot: Bot, headers: dict[str, str], body: bytes, path: str | None = None):
    headers = dict(headers)
    content_type = headers.pop("Content-Type", "application/json")
    return client.post(path or bot.callback_path, data=body, content_type=content_type, headers=headers)


def signed(message: dict, secret: str = APP_SECRET, timestamp: int | str | None = None) -> tuple[dict, bytes]:
    return dingtalk_callback(message, secret, timestamp)


def rows(bot: Bot):
    return InboundMessage.objects.filter(bot=bot)


def now_ms() -> int:
    return int(time.time() * 1000)


def test_the_adapter_is_registered():
    assert adapter_for("dingtalk") is DingTalkAdapter


def test_signature_matches_an_independent_hmac_sha256():
    # From OpenSSL, not Python: printf '1577262236757\nthis is secret' |
    #   openssl dgst -sha256 -hmac 'this is secret' -binary | base64
    # (the timestamp of DingTalk's doc example; no published vector exists).
    assert signature("1577262236757", "this is secret") == "hmPWwU+7lVdm3ZZz0r9tSfx0L4Q26jWOZr9+Gs6EZQM="


# -- messages in ----------------------------------------------------------------------


def test_a_signed_p2p_text_is_recorded(client, bot):
    message = fresh(fixture("p2p_text"))
    response = post(client, bot, *signed(message))
    assert response.status_code == 200
    assert response.content == b""
    row = rows(bot).get()
    assert row.status == MessageStatus.RECEIVED
    assert row.platform_message_id == message["msgId"]
    assert row.chat_id == "cidp2pk0Zr5SvXAcN5ZlXnR1w3Q=="
    assert row.chat_type == "p2p"
    assert row.sender_id == "manager4220"
    assert row.text == "澳大利亚的首都是哪里？"
    assert row.mentioned is True
    assert row.raw["reply_context"] == {
        "conversation_type": "1",
        "open_conversation_id": "cidp2pk0Zr5SvXAcN5ZlXnR1w3Q==",
        "staff_id": "manager4220",
        "robot_code": APP_KEY,
        "session_webhook": "https://oapi.dingtalk.com/robot/sendBySession?session=5b3a9a1d2c4e6f8091a2b3c4d5e6f708",
        "session_webhook_expires_ms": message["sessionWebhookExpiredTime"],
    }
    # The webhook is a credential for the chat: stored once, not again in the event.
    assert "sessionWebhook" not in row.raw["event"]
    assert row.raw["event"]["senderNick"] == "张三"


def test_a_sender_outside_the_organisation_is_known_by_sender_id(client, bot):
    message = fresh(fixture("p2p_text"))
    del message["senderStaffId"]
    assert post(client, bot, *signed(message)).status_code == 200
    row = rows(bot).get()
    assert row.sender_id == "$:LWCP_v1:$Ff09GIxz3E1ZSw7mG0mQmL8R4cYyQn2e"
    assert row.raw["reply_context"]["staff_id"] == ""


def test_a_group_message_that_mentions_the_robot_is_recorded(client, bot):
    assert post(client, bot, *signed(fresh(fixture("group_text_mention")))).status_code == 200
    row = rows(bot).get()
    assert (row.chat_type, row.mentioned, row.chat_id) == ("group", True, "cid6KeBBLoveMJOGXoYKF5x7EeiodoA==")
    assert row.text == "总结一下今天的站会"  # DingTalk's leading space is gone
    assert row.raw["reply_context"]["conversation_type"] == "2"


def test_a_group_message_without_mention_is_acknowledged_but_not_recorded(client, bot):
    assert bot.require_mention_in_groups
    response = post(client, bot, *signed(fresh(fixture("group_text"))))
    assert response.status_code == 200
    assert not rows(bot).exists()


def test_a_group_message_without_mention_is_answered_when_mentions_are_not_required(client, make_dingtalk_bot):
    bot = make_dingtalk_bot(require_mention_in_groups=False)
    assert post(client, bot, *signed(fresh(fixture("group_text")))).status_code == 200
    row = rows(bot).get()
    assert (row.mentioned, row.text) == (False, "中午一起吃饭吗？")


def test_a_leading_mention_of_the_robot_is_removed_when_its_name_is_known(client, make_dingtalk_bot):
    named = make_dingtalk_bot(extra={"bot_name": "小助手"})
    message = fresh(fixture("group_text_mention"))
    message["text"]["content"] = "@小助手 天气怎么样 @王五"
    assert post(client, named, *signed(message)).status_code == 200
    assert rows(named).get().text == "天气怎么样 @王五"


def test_only_the_robots_whole_name_is_removed(client, make_dingtalk_bot):
    named = make_dingtalk_bot(extra={"bot_name": "小助手"})
    message = fresh(fixture("group_text_mention"))
    message["text"]["content"] = "@小助手们 请注意"
    assert post(client, named, *signed(message)).status_code == 200
    assert rows(named).get().text == "@小助手们 请注意"


def test_without_the_robots_name_a_leading_mention_is_kept(client, bot):
    message = fresh(fixture("group_text_mention"))
    message["text"]["content"] = "@小助手 天气怎么样"
    assert post(client, bot, *signed(message)).status_code == 200
    assert rows(bot).get().text == "@小助手 天气怎么样"


@pytest.mark.parametrize("change", ["picture", "bare_mention", "no_msg_id", "bad_conversation_type", "text_not_object"])
def test_messages_without_a_question_are_acknowledged_and_not_recorded(client, make_dingtalk_bot, change):
    bot = make_dingtalk_bot(extra={"bot_name": "小助手"})
    message = fresh(fixture("p2p_picture" if change == "picture" else "p2p_text"))
    if change == "bare_mention":
        message["text"]["content"] = " @小助手 "
    elif change == "no_msg_id":
        del message["msgId"]
    elif change == "bad_conversation_type":
        message["conversationType"] = 1
    elif change == "text_not_object":
        message["text"] = "hello"
    response = post(client, bot, *signed(message))
    assert response.status_code == 200
    assert not rows(bot).exists()


def test_a_redelivery_with_a_new_signature_is_recorded_once(client, bot):
    message = fresh(fixture("p2p_text"))
    first = post(client, bot, *signed(message))
    again = post(client, bot, *signed(message, timestamp=now_ms() + 1))
    assert (first.status_code, again.status_code) == (200, 200)
    assert rows(bot).count() == 1


def test_the_very_same_request_again_is_a_redelivery_answered_as_the_first(client, bot):
    headers, body = signed(fresh(fixture("p2p_text")))
    first, again = post(client, bot, headers, body), post(client, bot, headers, body)
    assert (first.status_code, again.status_code, again.content) == (200, 200, first.content)
    assert rows(bot).count() == 1


def test_captured_headers_cannot_carry_another_body(client, bot):
    # The sign covers the timestamp only: once used, the pair is worthless.
    headers, body = signed(fresh(fixture("p2p_text")))
    assert post(client, bot, headers, body).status_code == 200
    forged = fresh(fixture("p2p_text"))
    forged["text"]["content"] = "transfer the budget"
    assert post(client, bot, headers, json.dumps(forged).encode()).status_code == 409
    assert list(rows(bot).values_list("text", flat=True)) == ["澳大利亚的首都是哪里？"]


def test_a_signature_is_refused_again_after_the_generic_nonce_window(client, bot, settings):
    # DingTalk's signature lives an hour: the claim must outlive CALLBACK_TIMESTAMP_WINDOW.
    settings.CALLBACK_TIMESTAMP_WINDOW = 1
    headers, body = signed(fresh(fixture("p2p_text")))
    assert post(client, bot, headers, body).status_code == 200
    time.sleep(1.2)
    forged = fresh(fixture("p2p_text"))
    forged["text"]["content"] = "transfer the budget"
    assert post(client, bot, headers, json.dumps(forged).encode()).status_code == 409


def test_a_signature_from_ahead_of_our_clock_stays_claimed_until_it_would_be_stale(bot, rf):
    # Valid until signed time + 1 h: 90 minutes from now for one signed 30 minutes ahead.
    headers, body = signed(fresh(fixture("p2p_text")), timestamp=now_ms() + 1_800_000)
    request = rf.post(
        bot.callback_path,
        data=body,
        content_type="application/json",
        headers={k: v for k, v in headers.items() if k != "Content-Type"},
    )
    adapter = DingTalkAdapter(bot)
    adapter.verify(request)
    ttl = get_redis_connection("default").ttl(replay.key(adapter.claimed_nonce))
    assert 5390 <= ttl <= 5402


def test_a_refused_body_does_not_use_up_the_signature(client, bot):
    headers, body = signed(fresh(fixture("p2p_text")))
    assert post(client, bot, headers, b'{"msgtype": "text", ').status_code == 400
    assert post(client, bot, headers, body).status_code == 200
    assert rows(bot).count() == 1


@pytest.mark.parametrize("age_seconds", [SIGNATURE_WINDOW_SECONDS - 60, -(SIGNATURE_WINDOW_SECONDS - 60)])
def test_a_timestamp_within_the_hour_is_accepted(client, bot, age_seconds):
    response = post(client, bot, *signed(fresh(fixture("p2p_text")), timestamp=now_ms() - age_seconds * 1000))
    assert response.status_code == 200
    assert rows(bot).count() == 1


# -- the bad corpus: 4xx, never 500, nothing recorded, and refused for the right reason


def _with(**fields):
    def build():
        message = fresh(fixture("p2p_text"))
        message.update(fields)
        return signed(message)

    return build


def _headers_changed(**changes):
    def build():
        headers, body = signed(fresh(fixture("p2p_text")))
        headers.update(changes)
        return {k: v for k, v in headers.items() if v is not None}, body

    return build


def _body(raw: bytes):
    return lambda: (signed({})[0], raw)


BAD_CORPUS = {
    "forged sign": (lambda: signed(fresh(fixture("p2p_text")), secret="a guessed secret"), 401, "sign does not match"),
    "sign missing": (_headers_changed(sign=None), 401, "timestamp or sign header is missing"),
    "timestamp missing": (_headers_changed(timestamp=None), 401, "timestamp or sign header is missing"),
    "sign of another timestamp": (_headers_changed(timestamp=str(now_ms() + 5)), 401, "sign does not match"),
    "non-ascii sign": (_headers_changed(sign="签名"), 401, "sign does not match"),
    "timestamp not a number": (
        lambda: signed(fresh(fixture("p2p_text")), timestamp="soon"),
        400,
        "timestamp header is not a number",
    ),
    "stale timestamp": (
        lambda: signed(fresh(fixture("p2p_text")), timestamp=now_ms() - 3_700_000),
        401,
        "refused (stale_timestamp)",
    ),
    "timestamp from the future": (
        lambda: signed(fresh(fixture("p2p_text")), timestamp=now_ms() + 3_700_000),
        401,
        "refused (stale_timestamp)",
    ),
    "malformed json": (_body(b'{"msgtype": "text", "text": {"content"'), 400, "the body is not JSON"),
    "json but not an object": (_body(b'["msgtype", "text"]'), 400, "not an object"),
    "not utf-8": (_body(b'{"msgtype": "\xff\xfe"}'), 400, "the body is not JSON"),
    "session webhook elsewhere": (
        _with(sessionWebhook="https://169.254.169.254/latest/meta-data/"),
        400,
        "is not on a DingTalk host",
    ),
    "session webhook on a look-alike host": (
        _with(sessionWebhook="https://oapi.dingtalk.com.evil.example/x"),
        400,
        "is not on a DingTalk host",
    ),
    "session webhook with user info": (
        _with(sessionWebhook="https://oapi.dingtalk.com@evil.example/x"),
        400,
        "is not on a DingTalk host",
    ),
    "session webhook over http": (
        _with(sessionWebhook="http://oapi.dingtalk.com/robot/sendBySession?session=1"),
        400,
        "is not on a DingTalk host",
    ),
    "session webhook on another port": (
        _with(sessionWebhook="https://oapi.dingtalk.com:8443/robot/send"),
        400,
        "is not on a DingTalk host",
    ),
    "session webhook not a string": (
        _with(sessionWebhook=["https://oapi.dingtalk.com/"]),
        400,
        "is not on a DingTalk host",
    ),
}


@pytest.mark.parametrize("case", BAD_CORPUS)
def test_bad_corpus_is_refused_for_the_right_reason(client, bot, caplog, case):
    build, status, reason = BAD_CORPUS[case]
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, bot, *build())
    assert response.status_code == status
    assert reason in caplog.text
    assert not rows(bot).exists()


def test_a_bot_without_app_secret_refuses_everything(client, make_dingtalk_bot, caplog):
    bot = make_dingtalk_bot(app_secret="")
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, bot, *signed(fresh(fixture("p2p_text")), secret=""))
    assert response.status_code == 401
    assert "this bot has no AppSecret" in caplog.text


def test_an_oversized_body_is_refused_with_413(client, bot):
    message = fresh(fixture("p2p_text"))
    message["text"]["content"] = "长" * settings.CALLBACK_MAX_BODY_BYTES
    assert post(client, bot, *signed(message)).status_code == 413
    assert not rows(bot).exists()


def test_an_unknown_bot_is_404(client, db):
    unknown = Bot(platform="dingtalk")  # unsaved: its uuid is in no row
    assert post(client, unknown, *signed(fresh(fixture("p2p_text")))).status_code == 404
    assert not InboundMessage.objects.exists()


def test_a_platform_mismatch_is_404(client, bot, make_bot):
    headers, body = signed(fresh(fixture("p2p_text")))
    assert post(client, bot, headers, body, path=f"/callback/feishu/{bot.uuid}/").status_code == 404
    feishu_bot = make_bot(platform="feishu", app_secret=APP_SECRET)
    assert post(client, bot, headers, body, path=f"/callback/dingtalk/{feishu_bot.uuid}/").status_code == 404
    assert not InboundMessage.objects.exists()


# -- messages out ---------------------------------------------------------------------


@pytest.fixture
def dingtalk():
    with FakeDingTalk() as fake:
        fake.add_app(APP_KEY, APP_SECRET)
        yield fake


@pytest.fixture
def sending_bot(make_dingtalk_bot, dingtalk) -> Bot:
    return make_dingtalk_bot(api_base_url=dingtalk.url)


@pytest.fixture
def http():
    with httpx.Client(timeout=2.0) as client:
        yield client


def reply(
    text: str = "堪培拉。",
    *,
    group: bool = False,
    webhook: str | None = None,
    expires_ms: int | None = None,
    staff_id: str = "manager4220",
    robot_code: str = APP_KEY,
) -> OutboundReply:
    conversation = "cidGroupConversation==" if group else "cidp2pConversation=="
    context = {
        "conversation_type": "2" if group else "1",
        "open_conversation_id": conversation,
        "staff_id": staff_id,
        "robot_code": robot_code,
    }
    if webhook:
        context.update(session_webhook=webhook, session_webhook_expires_ms=expires_ms)
    return OutboundReply(
        chat_id=conversation,
        chat_type="group" if group else "p2p",
        sender_id=staff_id,
        text=text,
        reply_context=context,
        idempotency_key="sb-1-0",
    )


def test_the_default_api_base_is_dingtalks(make_dingtalk_bot):
    assert DingTalkAdapter(make_dingtalk_bot()).api_base == "https://api.dingtalk.com"


def test_a_live_session_webhook_gets_the_reply_without_a_token(dingtalk, sending_bot, http):
    webhook, expires = dingtalk.open_session("cidp2pConversation==")
    DingTalkAdapter(sending_bot).send(reply("堪培拉 — Canberra.", webhook=webhook, expires_ms=expires), http)
    [request] = dingtalk.received(r"/robot/sendBySession$")
    assert request.json() == {"msgtype": "text", "text": {"content": "堪培拉 — Canberra."}}
    assert [(m["via"], m["conversation_id"], m["text"]) for m in dingtalk.sent] == [
        ("session", "cidp2pConversation==", "堪培拉 — Canberra.")
    ]
    assert dingtalk.token_requests() == 0


def test_an_expired_session_webhook_is_not_tried_and_the_robot_api_answers_one_to_one(dingtalk, sending_bot, http):
    webhook, _ = dingtalk.open_session("cidp2pConversation==")
    DingTalkAdapter(sending_bot).send(reply(webhook=webhook, expires_ms=now_ms() - 1), http)
    assert dingtalk.received(r"/robot/sendBySession$") == []
    [token_request] = dingtalk.received(r"/oauth2/accessToken$")
    assert token_request.json() == {"appKey": APP_KEY, "appSecret": APP_SECRET}
    [request] = dingtalk.received(r"/oToMessages/batchSend$")
    body = request.json()
    assert body == {
        "robotCode": APP_KEY,
        "userIds": ["manager4220"],
        "msgKey": "sampleText",
        "msgParam": body["msgParam"],
    }
    assert isinstance(body["msgParam"], str) and json.loads(body["msgParam"]) == {"content": "堪培拉。"}
    assert request.headers["x-acs-dingtalk-access-token"]
    assert [(m["via"], m["user_ids"], m["text"]) for m in dingtalk.sent] == [("oto", ["manager4220"], "堪培拉。")]


def test_a_session_webhook_about_to_expire_is_not_started_on(dingtalk, sending_bot, http):
    webhook, _ = dingtalk.open_session("cidp2pConversation==")
    expires = now_ms() + SESSION_WEBHOOK_MARGIN_MS - 1000
    DingTalkAdapter(sending_bot).send(reply(webhook=webhook, expires_ms=expires), http)
    assert dingtalk.received(r"/robot/sendBySession$") == []
    assert [m["via"] for m in dingtalk.sent] == ["oto"]


def test_an_expired_group_session_falls_back_to_the_group_send_api(dingtalk, sending_bot, http):
    webhook, _ = dingtalk.open_session("cidGroupConversation==", "2")
    DingTalkAdapter(sending_bot).send(reply(group=True, webhook=webhook, expires_ms=now_ms() - 1), http)
    [request] = dingtalk.received(r"/groupMessages/send$")
    body = request.json()
    assert (body["robotCode"], body["openConversationId"], body["msgKey"]) == (
        APP_KEY,
        "cidGroupConversation==",
        "sampleText",
    )
    assert json.loads(body["msgParam"]) == {"content": "堪培拉。"}
    assert [(m["via"], m["conversation_id"]) for m in dingtalk.sent] == [("group", "cidGroupConversation==")]


def test_a_session_webhook_dingtalk_refuses_early_falls_back_to_the_robot_api(dingtalk, sending_bot, http, caplog):
    webhook, expires = dingtalk.open_session("cidp2pConversation==")
    dingtalk.expire_sessions()  # revoked before its advertised expiry
    with caplog.at_level(logging.INFO, logger="switchboard.adapters.dingtalk"):
        DingTalkAdapter(sending_bot).send(reply(webhook=webhook, expires_ms=expires), http)
    assert len(dingtalk.received(r"/robot/sendBySession$")) == 1
    assert [m["via"] for m in dingtalk.sent] == ["oto"]
    assert "refused the sessionWebhook" in caplog.text and "300001" in caplog.text


def test_the_access_token_is_fetched_once_and_shared_across_sends(dingtalk, sending_bot, http):
    DingTalkAdapter(sending_bot).send(reply(), http)
    DingTalkAdapter(sending_bot).send(reply(group=True), http)  # a new adapter: the cache is in Redis
    assert dingtalk.token_requests() == 1
    tokens = {r.headers["x-acs-dingtalk-access-token"] for r in dingtalk.received(r"/v1.0/robot/")}
    assert len(tokens) == 1
    assert [m["via"] for m in dingtalk.sent] == ["oto", "group"]


def test_a_refused_token_is_forgotten_and_the_send_retried_once(dingtalk, sending_bot, http, caplog):
    DingTalkAdapter(sending_bot).send(reply(), http)
    dingtalk.expire_tokens()
    with caplog.at_level(logging.DEBUG):
        DingTalkAdapter(sending_bot).send(reply("second"), http)
    assert dingtalk.token_requests() == 2
    assert len(dingtalk.received(r"/batchSend$")) == 3  # first, second refused, second again
    assert [m["text"] for m in dingtalk.sent] == ["堪培拉。", "second"]
    assert "refused the cached access token" in caplog.text
    tokens = {r.headers["x-acs-dingtalk-access-token"] for r in dingtalk.received(r"/batchSend$")}
    assert len(tokens) == 2
    assert all(secret not in caplog.text for secret in (APP_SECRET, *tokens))


def test_a_token_refused_twice_is_transient(dingtalk, sending_bot, http):
    refused = Fault(401, {"code": "InvalidAuthentication", "message": "不合法的access_token"})
    dingtalk.plan(r"/batchSend$", refused, refused)
    with pytest.raises(TransportError) as error:
        DingTalkAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is False
    assert dingtalk.token_requests() == 2 and dingtalk.sent == []


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        (Fault(200, {"errcode": -1, "errmsg": "系统繁忙"}), None),
        (Fault(200, {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}), None),
        (Fault(502, "<html>502 Bad Gateway</html>"), None),
        (Fault(429, {}, headers={"Retry-After": "7"}), 7.0),
    ],
    ids=["busy", "rate limit", "gateway error", "http 429"],
)
def test_a_busy_session_webhook_is_transient_and_not_sent_twice_elsewhere(
    dingtalk, sending_bot, http, fault, retry_after
):
    webhook, expires = dingtalk.open_session("cidp2pConversation==")
    dingtalk.plan(r"/robot/sendBySession$", fault)
    with pytest.raises(TransportError) as error:
        DingTalkAdapter(sending_bot).send(reply(webhook=webhook, expires_ms=expires), http)
    assert (error.value.permanent, error.value.retry_after) == (False, retry_after)
    assert dingtalk.received(r"/v1.0/") == []  # no fallback: DingTalk asked us to wait


def test_a_session_webhook_timeout_is_transient_without_a_fallback(dingtalk, sending_bot):
    webhook, expires = dingtalk.open_session("cidp2pConversation==")
    dingtalk.plan(r"/robot/sendBySession$", Fault(delay=0.6, passthrough=True))
    with httpx.Client(timeout=0.2) as impatient, pytest.raises(TransportError) as error:
        DingTalkAdapter(sending_bot).send(reply(webhook=webhook, expires_ms=expires), impatient)
    assert error.value.permanent is False
    # The slow request may still land: sending through the robot API too could double it.
    assert dingtalk.received(r"/v1.0/") == []


def test_a_stored_webhook_on_a_foreign_host_is_never_called(dingtalk, sending_bot, http, caplog):
    with FakeDingTalk() as elsewhere:
        webhook, expires = elsewhere.open_session("cidp2pConversation==")
        with caplog.at_level(logging.WARNING, logger="switchboard.adapters.dingtalk"):
            DingTalkAdapter(sending_bot).send(reply(webhook=webhook, expires_ms=expires), http)
        assert elsewhere.requests == []
    assert [m["via"] for m in dingtalk.sent] == ["oto"]
    assert "not on a DingTalk host" in caplog.text


def test_a_flow_controlled_one_to_one_send_is_transient(dingtalk, sending_bot, http):
    dingtalk.flow_control()
    with pytest.raises(TransportError, match="flow control") as error:
        DingTalkAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is False


def test_an_unknown_staff_id_is_permanent(dingtalk, sending_bot, http):
    dingtalk.staff = {"someone-else"}
    with pytest.raises(TransportError, match="does not know the staffId") as error:
        DingTalkAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_a_one_to_one_reply_without_staff_id_after_expiry_is_permanent(dingtalk, sending_bot, http):
    with pytest.raises(TransportError, match="no staffId") as error:
        DingTalkAdapter(sending_bot).send(reply(staff_id=""), http)
    assert error.value.permanent is True
    assert dingtalk.requests == []


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        (Fault(429, {"code": "Throttling.Api", "message": "api flow control"}, headers={"Retry-After": "3"}), 3.0),
        (Fault(403, {"code": "Forbidden.AccessDenied.QpsLimitForApi", "message": "qps limit"}), None),
        (Fault(500, {"code": "SystemError", "message": "system error"}), None),
        (Fault(503, "<html>503</html>"), None),
    ],
    ids=["429", "qps limit code", "500", "503 page"],
)
def test_robot_api_rate_limits_and_server_errors_are_transient(dingtalk, sending_bot, http, fault, retry_after):
    dingtalk.plan(r"/batchSend$", fault)
    with pytest.raises(TransportError) as error:
        DingTalkAdapter(sending_bot).send(reply(), http)
    assert (error.value.permanent, error.value.retry_after) == (False, retry_after)


def test_a_robot_missing_from_the_group_is_permanent_with_a_hint(dingtalk, sending_bot, http):
    dingtalk.groups_without_robot.add("cidGroupConversation==")
    with pytest.raises(TransportError) as error:
        DingTalkAdapter(sending_bot).send(reply(group=True), http)
    assert error.value.permanent is True
    assert "invalidParameter.robotCode.notExsit" in str(error.value) and "robot_code" in str(error.value)


def test_extra_robot_code_overrides_the_callbacks(dingtalk, make_dingtalk_bot, http):
    bot = make_dingtalk_bot(api_base_url=dingtalk.url, extra={"robot_code": "dingOtherRobot"})
    with pytest.raises(TransportError, match="robotCode.auth") as error:
        DingTalkAdapter(bot).send(reply(), http)
    assert error.value.permanent is True
    assert dingtalk.received(r"/batchSend$")[0].json()["robotCode"] == "dingOtherRobot"


def test_a_wrong_app_secret_is_permanent_and_not_repeated_in_the_error(dingtalk, make_dingtalk_bot, http):
    bot = make_dingtalk_bot(api_base_url=dingtalk.url, app_secret="an-outdated-secret")
    with pytest.raises(TransportError) as error:
        DingTalkAdapter(bot).send(reply(), http)
    assert error.value.permanent is True
    assert "invalidClientIdOrSecret" in str(error.value) and "AppSecret" in str(error.value)
    assert "an-outdated-secret" not in str(error.value)
    assert dingtalk.received(r"/batchSend$") == []


def test_something_that_is_not_dingtalks_api_is_permanent(dingtalk, sending_bot, http):
    dingtalk.plan(r"/batchSend$", Fault(404, "<html>Not Found</html>"))
    with pytest.raises(TransportError, match="API base URL") as error:
        DingTalkAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_an_unreachable_dingtalk_is_transient(make_dingtalk_bot, http):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bot = make_dingtalk_bot(api_base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError) as error:
        DingTalkAdapter(bot).send(reply(), http)
    assert error.value.permanent is False


@pytest.mark.parametrize("character", ["😀", '"', "\n", "长"], ids=["4-byte", "quote", "newline", "3-byte"])
def test_a_reply_of_the_longest_length_fits_the_robot_api(dingtalk, sending_bot, http, character):
    # max_reply_length counts UTF-8 bytes; a JSON escape can double them in msgParam.
    text = character * (DingTalkAdapter.max_reply_length // len(character.encode()))
    assert len(text.encode()) <= DingTalkAdapter.max_reply_length
    DingTalkAdapter(sending_bot).send(reply(text), http)
    assert dingtalk.sent[0]["text"] == text


def test_a_reply_too_long_for_msg_param_is_permanent_not_cut(dingtalk, sending_bot, http):
    with pytest.raises(TransportError, match="15000") as error:
        DingTalkAdapter(sending_bot).send(reply("\x01" * 3000), http)  # six bytes each as \u0001
    assert error.value.permanent is True
    assert dingtalk.sent == []
