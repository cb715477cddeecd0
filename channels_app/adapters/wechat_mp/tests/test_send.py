"""The customer-service API (verified accounts) against FakeWeChatMP: the wire format,
the shared token, and which refusals are worth a retry."""

from __future__ import annotations

import logging

import httpx
import pytest

from channels_app.adapters.wechat_mp.adapter import WeChatMPAdapter
from channels_app.adapters.wechat_mp.tests.support import APP_ID, OPENID, SECRET
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.outbound import split_reply
from tests.fakes.server import Fault
from tests.fakes.wechat_mp import FakeWeChatMP


@pytest.fixture
def fake():
    with FakeWeChatMP(app_id=APP_ID, app_secret=SECRET) as server:
        yield server


@pytest.fixture
def http():
    with httpx.Client(timeout=2.0) as client:
        yield client


@pytest.fixture
def bot(make_mp_bot, fake):
    return make_mp_bot(customer_service=True, api_base_url=fake.url)


def reply(text: str = "你好！有什么可以帮你？", openid: str = OPENID) -> OutboundReply:
    return OutboundReply(
        chat_id=openid,
        chat_type="p2p",
        sender_id=openid,
        text=text,
        reply_context={"openid": openid, "msgid": "1", "question": "你好"},
        idempotency_key="k:0",
    )


def refused(bot, http, text: str = "hi") -> TransportError:
    with pytest.raises(TransportError) as caught:
        WeChatMPAdapter(bot).send(reply(text), http)
    return caught.value


def test_send_speaks_the_wechat_wire_format(bot, fake, http):
    WeChatMPAdapter(bot).send(reply("早上好"), http)

    assert fake.sent == [{"touser": OPENID, "msgtype": "text", "text": {"content": "早上好"}}]
    (token_request,) = fake.received(r"/cgi-bin/stable_token")
    assert token_request.method == "POST" and token_request.query == {}  # the secret is not in the URL
    assert token_request.json() == {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET}
    (send_request,) = fake.received(r"/cgi-bin/message/custom/send")
    assert send_request.query == {"access_token": ["tok-1"]}
    assert send_request.headers["content-type"] == "application/json"
    # UTF-8 as it is: WeChat shows \\uXXXX escapes literally in some clients.
    assert "早上好".encode() in send_request.body


def test_the_token_is_fetched_once_and_shared_across_sends(bot, fake, http):
    WeChatMPAdapter(bot).send(reply("one"), http)
    WeChatMPAdapter(bot).send(reply("two"), http)  # a new instance: the cache is Redis
    assert len(fake.received(r"/stable_token")) == 1
    assert [m["text"]["content"] for m in fake.sent] == ["one", "two"]


def test_an_expired_token_is_replaced_and_the_send_retried_once(bot, fake, http):
    WeChatMPAdapter(bot).send(reply("before"), http)
    fake.expire_token()

    WeChatMPAdapter(bot).send(reply("after"), http)

    used = [r.query["access_token"][0] for r in fake.received(r"/message/custom/send")]
    assert used == ["tok-1", "tok-1", "tok-2"]
    assert [m["text"]["content"] for m in fake.sent] == ["before", "after"]


@pytest.mark.parametrize("errcode", [40001, 40014, 42001])
def test_a_token_refused_twice_is_a_temporary_failure(bot, fake, http, errcode):
    dead = Fault(200, {"errcode": errcode, "errmsg": "invalid credential"})
    fake.plan(r"/message/custom/send", dead, dead)
    error = refused(bot, http)
    assert error.permanent is False
    assert len(fake.received(r"/message/custom/send")) == 2  # one retry, not a loop
    assert len(fake.received(r"/stable_token")) == 2


def test_a_user_silent_for_48_hours_is_a_permanent_failure(bot, fake, http):
    fake.silent_users.add(OPENID)
    error = refused(bot, http)
    assert error.permanent is True
    assert "errcode 45015" in str(error) and "48 hours" in str(error)


def test_an_unverified_account_is_told_to_use_passive_replies(make_mp_bot, http):
    with FakeWeChatMP(app_id=APP_ID, app_secret=SECRET, verified=False) as fake:
        bot = make_mp_bot(customer_service=True, api_base_url=fake.url)
        error = refused(bot, http)
    assert error.permanent is True
    assert "errcode 48001" in str(error) and '"customer_service_api": false' in str(error)


@pytest.mark.parametrize(
    ("errcode", "errmsg", "hint"),
    [
        (40003, "invalid openid", "not a follower"),
        (43004, "require subscribe", "no longer follows"),
        (45002, "content size out of limit", "2048 bytes"),
        (45047, "out of response count limit", "20 customer-service messages"),
        (40164, "invalid ip 203.0.113.9, not in whitelist", "IP白名单"),
    ],
)
def test_refusals_that_a_retry_cannot_fix_are_permanent(bot, fake, http, errcode, errmsg, hint):
    fake.plan(r"/message/custom/send", Fault(200, {"errcode": errcode, "errmsg": errmsg}))
    error = refused(bot, http)
    assert error.permanent is True
    assert f"errcode {errcode}" in str(error) and errmsg in str(error) and hint in str(error)


@pytest.mark.parametrize("errcode", [-1, 45009, 45011])
def test_busy_and_rate_limited_are_temporary(bot, fake, http, errcode):
    fake.plan(r"/message/custom/send", Fault(200, {"errcode": errcode, "errmsg": "system busy"}))
    assert refused(bot, http).permanent is False


@pytest.mark.parametrize(("status", "permanent"), [(503, False), (502, False), (429, False), (404, True)])
def test_http_errors(bot, fake, http, status, permanent):
    fake.plan(r"/message/custom/send", Fault(status, {"error": "upstream"}))
    error = refused(bot, http)
    assert error.permanent is permanent and str(status) in str(error)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("<html>gateway</html>", id="not-json"),
        pytest.param({"msgid": 1}, id="no-errcode"),
        pytest.param({"errcode": "0"}, id="errcode-not-a-number"),
        pytest.param([0], id="not-an-object"),
    ],
)
def test_an_answer_that_is_not_wechat_is_not_taken_as_delivered(bot, fake, http, body):
    fake.plan(r"/message/custom/send", Fault(200, body))
    assert refused(bot, http).permanent is False


def test_a_timeout_is_temporary(bot, fake):
    fake.plan(r"/message/custom/send", Fault(delay=1.0, passthrough=True))
    with httpx.Client(timeout=0.2) as http:
        error = refused(bot, http)
    assert error.permanent is False and "timed out" in str(error)


def test_a_refused_connection_is_temporary(bot, http):
    bot.api_base_url = "http://127.0.0.1:1"  # nothing listens on port 1
    assert refused(bot, http).permanent is False


@pytest.mark.parametrize(("field", "value", "errcode"), [("app_secret", "wrong", 40125), ("app_id", "wxwrong", 40013)])
def test_wrong_credentials_are_permanent_and_named(bot, fake, http, field, value, errcode):
    setattr(bot, field, value)
    error = refused(bot, http)
    assert error.permanent is True and f"stable_token refused: errcode {errcode}" in str(error)
    assert fake.sent == []


def test_a_token_answer_without_a_token_is_temporary(bot, fake, http):
    fake.plan(r"/stable_token", Fault(200, {"expires_in": 7200}))
    assert refused(bot, http).permanent is False and fake.sent == []


def test_neither_secret_nor_token_reaches_the_log(bot, fake, http, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    adapter = WeChatMPAdapter(bot)
    adapter.send(reply("one"), http)
    fake.expire_token()
    adapter.send(reply("two"), http)
    fake.plan(r"/message/custom/send", Fault(200, {"errcode": 45015, "errmsg": "response out of time limit"}))
    with pytest.raises(TransportError) as caught:
        adapter.send(reply("three"), http)

    assert "/message/custom/send" in caplog.text  # httpx did log the requests…
    for secret in (SECRET, "tok-1", "tok-2"):  # …without what their query strings carried
        assert secret not in caplog.text and secret not in str(caught.value)


def test_long_replies_split_by_the_adapters_policy_fit_wechat(bot, fake, http):
    # 3 bytes per character: a limit counted in characters would make WeChat refuse (45002).
    text = "长" * 1500 + "\n\n" + "文" * 2500
    adapter = WeChatMPAdapter(bot)
    parts = split_reply(text, adapter.max_reply_length, adapter.length_unit)
    for part in parts:
        adapter.send(reply(part), http)
    assert len(parts) > 2
    assert "".join(m["text"]["content"] for m in fake.sent) == text
