"""WeCom through the real callback view (PostgreSQL, Redis) and the send API against
FakeWeCom."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import httpx
import pytest

from channels_app.adapters.wecom.adapter import WeComAdapter
from channels_app.crypto import WXBizMsgCrypt
from channels_app.crypto.tests.vectors import vector
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.outbound import split_reply
from channels_app.registry import adapter_for
from tests.fakes.server import Fault
from tests.fakes.wecom import FakeWeCom, wecom_callback, wecom_envelope, wecom_text_xml, wecom_url_verification

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CORP_ID = "ww1436e0e65a779aee"
SECRET = "corp-secret-do-not-log-7f3a9c"
TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
OTHER_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
AGENT_ID = 1000002
USER = "ZhangSan"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.fixture
def bot(make_bot):
    return make_bot(
        app_id=CORP_ID, app_secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY, extra={"agent_id": AGENT_ID}
    )


def creds(**changes) -> SimpleNamespace:
    """What WeCom signs and encrypts with; differs from the bot only where a test says."""
    fields = {"app_id": CORP_ID, "token": TOKEN, "encoding_aes_key": AES_KEY, **changes}
    return SimpleNamespace(**fields)


def post(client, bot, query: str, body: bytes, platform: str = "wecom"):
    return client.post(f"/callback/{platform}/{bot.uuid}/?{query}", data=body, content_type="text/xml")


def text_xml(content: str = "你好，机器人", msg_id: int = 7385000000000000042) -> str:
    return wecom_text_xml(CORP_ID, USER, content, msg_id, AGENT_ID)


def assert_refused(response, status: int) -> None:
    assert response.status_code == status, response.content
    assert not InboundMessage.objects.exists()


def test_the_registry_serves_wecom_with_this_adapter():
    assert adapter_for("wecom") is WeComAdapter


# -- URL verification (GET) ----------------------------------------------------------------


@pytest.mark.parametrize("vector_id", ["v01", "v04"])
def test_url_verification_vectors_answer_the_bare_echo(client, make_bot, settings, vector_id):
    inputs, expected = vector(vector_id)["inputs"], vector(vector_id)["expected"]
    settings.CALLBACK_TIMESTAMP_WINDOW = 10**10  # the vectors are from 2014 and 2016
    bot = make_bot(app_id=inputs["receiveid"], token=inputs["token"], encoding_aes_key=inputs["encoding_aes_key"])
    query = inputs.get("raw_query") or urlencode(
        {name: inputs[name] for name in ("msg_signature", "timestamp", "nonce", "echostr")}
    )
    assert "%2B" in query  # the echostr's '+' arrives percent-encoded, as WeCom sends it

    response = client.get(f"/callback/wecom/{bot.uuid}/?{query}")

    assert response.status_code == 200
    assert response.content == expected["response_body"].encode()
    assert response["Content-Type"] == "text/plain"


def test_url_verification_keeps_a_literal_plus_in_the_echostr(client, make_bot, settings):
    # A proxy that decoded the query once leaves bare '+' and '/': form decoding would
    # turn '+' into a space and break both the signature and the base64.
    inputs = vector("v01")["inputs"]
    settings.CALLBACK_TIMESTAMP_WINDOW = 10**10
    bot = make_bot(app_id=inputs["receiveid"], token=inputs["token"], encoding_aes_key=inputs["encoding_aes_key"])
    query = "&".join(f"{name}={inputs[name]}" for name in ("msg_signature", "timestamp", "nonce", "echostr"))
    assert "+" in query

    response = client.get(f"/callback/wecom/{bot.uuid}/?{query}")

    assert response.status_code == 200
    assert response.content == vector("v01")["expected"]["response_body"].encode()


def test_url_verification_with_a_fresh_timestamp(client, bot):
    response = client.get(f"{bot.callback_path}?{wecom_url_verification(creds(), '5927352381066411412')}")
    assert (response.status_code, response.content) == (200, b"5927352381066411412")
    assert response["Content-Type"] == "text/plain"


def test_url_verification_checks_the_timestamp(client, make_bot):
    inputs = vector("v01")["inputs"]
    bot = make_bot(app_id=inputs["receiveid"], token=inputs["token"], encoding_aes_key=inputs["encoding_aes_key"])
    response = client.get(f"/callback/wecom/{bot.uuid}/?{inputs['raw_query']}")
    assert response.status_code == 401
    assert b"1616140317555161061" not in response.content


@pytest.mark.parametrize(
    ("query_creds", "status"),
    [
        pytest.param({"token": "another-token"}, 401, id="wrong-token"),
        pytest.param({"encoding_aes_key": OTHER_AES_KEY}, 401, id="wrong-key"),
        pytest.param({"app_id": "wwanothercorp0001"}, 401, id="other-corp"),
    ],
)
def test_url_verification_refusals(client, bot, query_creds, status):
    response = client.get(f"{bot.callback_path}?{wecom_url_verification(creds(**query_creds), '123456')}")
    assert response.status_code == status
    assert b"123456" not in response.content


def test_url_verification_without_echostr_is_malformed(client, bot):
    query = wecom_url_verification(creds(), "123456").split("&echostr=")[0]
    assert client.get(f"{bot.callback_path}?{query}").status_code == 400


# -- messages (POST) -------------------------------------------------------------------------


def test_a_text_message_is_recorded_and_answered_with_an_empty_200(client, bot):
    response = post(client, bot, *wecom_callback(creds(), text_xml("今天上海天气怎么样？", 7385000000000000001)))

    assert response.status_code == 200
    assert response.content == b""
    row = InboundMessage.objects.get()
    assert row.bot == bot
    assert row.platform_message_id == "7385000000000000001"
    assert (row.chat_id, row.chat_type, row.sender_id) == (USER, "p2p", USER)
    assert row.text == "今天上海天气怎么样？"
    assert row.mentioned is True
    assert row.status == MessageStatus.RECEIVED
    assert row.raw["reply_context"] == {"touser": USER, "agent_id": str(AGENT_ID)}
    assert row.raw["event"]["MsgType"] == "text"
    assert row.raw["event"]["ToUserName"] == CORP_ID


def test_a_redelivery_with_a_new_nonce_is_acknowledged_and_not_recorded_twice(client, bot):
    xml = text_xml()
    first = post(client, bot, *wecom_callback(creds(), xml, nonce="1111111111"))
    again = post(client, bot, *wecom_callback(creds(), xml, nonce="2222222222"))

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == b""
    assert InboundMessage.objects.count() == 1


@pytest.mark.parametrize(
    ("fixture_name", "recorded"),
    [("text_message.xml", True), ("enter_agent_event.xml", False), ("image_message.xml", False)],
)
def test_fixtures(client, bot, fixture_name, recorded):
    response = post(client, bot, *wecom_callback(creds(), fixture(fixture_name)))
    assert (response.status_code, response.content) == (200, b"")
    assert InboundMessage.objects.exists() is recorded


@pytest.mark.parametrize(("signed_id", "decrypt_id"), [("v02", "v03"), ("v05", "v06")])
def test_published_message_vectors_through_the_view(client, make_bot, settings, signed_id, decrypt_id):
    # Each pair is one real callback: the signature over a ciphertext and its plaintext.
    signed, decrypted = vector(signed_id)["inputs"], vector(decrypt_id)
    settings.CALLBACK_TIMESTAMP_WINDOW = 10**10
    bot = make_bot(
        app_id=decrypted["expected"]["receiveid"],
        token=signed["token"],
        encoding_aes_key=decrypted["inputs"]["encoding_aes_key"],
    )
    assert signed["encrypt"] == decrypted["inputs"]["encrypt"]
    query = urlencode(
        {
            "msg_signature": vector(signed_id)["expected"]["msg_signature"],
            "timestamp": signed["timestamp"],
            "nonce": signed["nonce"],
        }
    )
    body = (
        f"<xml><ToUserName><![CDATA[{bot.app_id}]]></ToUserName>"
        f"<Encrypt><![CDATA[{signed['encrypt']}]]></Encrypt></xml>"
    )

    response = post(client, bot, query, body.encode())

    assert (response.status_code, response.content) == (200, b"")
    row = InboundMessage.objects.get()
    expected = {"v03": ("4561255354251345929", "mycreate", "hello"), "v06": ("1456453720", "ChenJiaShun", "你好")}[
        decrypt_id
    ]
    assert (row.platform_message_id, row.sender_id, row.text) == expected


# -- the bad-callback corpus: every one a 4xx, no row, never a 500 ----------------------------


def test_forged_signature(client, bot):
    query, body = wecom_callback(creds(token="not-the-token"), text_xml())
    assert_refused(post(client, bot, query, body), 401)


def test_signature_with_non_ascii_characters(client, bot):
    query, body = wecom_callback(creds(), text_xml())
    query = query.replace("msg_signature=", "msg_signature=%E7%AD%BE")
    assert_refused(post(client, bot, query, body), 401)


# Past the 300 s window by a margin: int(time()) rounds down, so +301 could land inside.
@pytest.mark.parametrize("offset", [-305, +305])
def test_stale_or_future_timestamp(client, bot, offset):
    query, body = wecom_callback(creds(), text_xml(), timestamp=int(time.time()) + offset)
    assert_refused(post(client, bot, query, body), 401)


def test_the_same_request_again_is_a_redelivery(client, bot):
    # WeCom sends a request it got no timely answer to again, unchanged.
    query, body = wecom_callback(creds(), text_xml())
    assert post(client, bot, query, body).status_code == 200
    again = post(client, bot, query, body)
    assert (again.status_code, again.content) == (200, b"")
    assert InboundMessage.objects.count() == 1


def test_a_nonce_reused_for_another_message_is_refused(client, bot):
    assert post(client, bot, *wecom_callback(creds(), text_xml(), nonce="reused")).status_code == 200
    other = text_xml("another message", msg_id=7385000000000000043)
    assert post(client, bot, *wecom_callback(creds(), other, nonce="reused")).status_code == 409
    assert InboundMessage.objects.count() == 1


def test_wrong_aes_key(client, make_bot, caplog):
    bot = make_bot(app_id=CORP_ID, token=TOKEN, encoding_aes_key=OTHER_AES_KEY)
    response = post(client, bot, *wecom_callback(creds(), text_xml()))
    assert_refused(response, 401)
    assert "EncodingAESKey differs" in caplog.text


def test_receive_id_mismatch(client, bot, caplog):
    response = post(client, bot, *wecom_callback(creds(app_id="wwanothercorp0001"), text_xml()))
    assert_refused(response, 401)
    assert "wwanothercorp0001" in caplog.text and CORP_ID in caplog.text


def _ciphertext_bytes() -> bytes:
    return base64.b64decode(WXBizMsgCrypt(AES_KEY, CORP_ID).encrypt(text_xml()))


@pytest.mark.parametrize(
    ("encrypt", "status"),
    [
        pytest.param(base64.b64encode(_ciphertext_bytes()[:-5]).decode(), 400, id="truncated-mid-block"),
        pytest.param(base64.b64encode(_ciphertext_bytes()[:-32]).decode(), 401, id="truncated-whole-blocks"),
        pytest.param("@@not*base64@@", 400, id="not-base64"),
    ],
)
def test_broken_ciphertext_signed_with_the_right_token(client, bot, encrypt, status):
    assert_refused(post(client, bot, *wecom_envelope(creds(), encrypt)), status)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<xml><Encrypt>abc</Encrypt", id="unclosed"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"Encrypt": "abc"}', id="json"),
        pytest.param(b"<xml><ToUserName>x</ToUserName></xml>", id="no-encrypt"),
        pytest.param(b"<xml><Encrypt></Encrypt></xml>", id="empty-encrypt"),
    ],
)
def test_malformed_body(client, bot, body):
    query, _ = wecom_callback(creds(), text_xml())
    assert_refused(post(client, bot, query, body), 400)


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
)
XXE = '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize("prolog", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "xxe"])
def test_entity_tricks_in_the_body(client, bot, prolog):
    query, body = wecom_callback(creds(), text_xml())
    body = prolog + body.decode().replace("<Encrypt>", "<Encrypt>&lol3;" if "lol" in prolog else "<Encrypt>&xxe;")
    assert_refused(post(client, bot, query, body.encode()), 400)


def test_entity_tricks_inside_the_encrypted_message(client, bot):
    # Signed and encrypted correctly, so only the parser of the decrypted XML stands guard.
    xml = BILLION_LAUGHS + text_xml().replace("<Content>", "<Content>&lol3;")
    assert_refused(post(client, bot, *wecom_callback(creds(), xml)), 400)


def test_text_message_without_msgid(client, bot):
    xml = text_xml().replace("<MsgId>7385000000000000042</MsgId>\n", "")
    assert_refused(post(client, bot, *wecom_callback(creds(), xml)), 400)


@pytest.mark.parametrize("missing", ["msg_signature", "timestamp", "nonce"])
def test_missing_query_parameter(client, bot, missing):
    query, body = wecom_callback(creds(), text_xml())
    query = "&".join(pair for pair in query.split("&") if not pair.startswith(f"{missing}="))
    assert_refused(post(client, bot, query, body), 400)


@pytest.mark.parametrize("timestamp", ["17e8", "１７００００００００", "9" * 5000, "-1"])
def test_timestamp_that_is_not_plain_seconds(client, bot, timestamp):
    query, body = wecom_callback(creds(), text_xml())
    query = "&".join(pair for pair in query.split("&") if not pair.startswith("timestamp="))
    assert_refused(post(client, bot, f"{query}&{urlencode({'timestamp': timestamp})}", body), 400)


def test_a_repeated_query_parameter(client, bot):
    query, body = wecom_callback(creds(), text_xml())
    assert_refused(post(client, bot, f"{query}&nonce=123", body), 400)


def test_oversized_body(client, bot, settings):
    query, body = wecom_callback(creds(), text_xml())
    padding = b" " * (settings.CALLBACK_MAX_BODY_BYTES + 1 - len(body))
    assert_refused(post(client, bot, query, body.replace(b"</xml>", padding + b"</xml>")), 413)


def test_unknown_bot(client, bot):
    query, body = wecom_callback(creds(), text_xml())
    response = client.post(
        f"/callback/wecom/00000000-0000-4000-8000-000000000000/?{query}", data=body, content_type="text/xml"
    )
    assert_refused(response, 404)


def test_platform_mismatch(client, bot):
    assert_refused(post(client, bot, *wecom_callback(creds(), text_xml()), platform="feishu"), 404)


@pytest.mark.parametrize("unset", ["token", "app_id"])
def test_a_bot_without_token_or_corp_id_refuses_everything(client, make_bot, unset):
    # With an empty Token anyone could compute msg_signature.
    bot = make_bot(**{"app_id": CORP_ID, "token": TOKEN, "encoding_aes_key": AES_KEY, unset: ""})
    response = post(client, bot, *wecom_callback(creds(**{unset: ""}), text_xml()))
    assert_refused(response, 401)


def test_a_bot_with_an_unusable_key_refuses_with_a_reason(client, make_bot, caplog):
    bot = make_bot(app_id=CORP_ID, token=TOKEN, encoding_aes_key="too-short")
    assert_refused(post(client, bot, *wecom_callback(creds(), text_xml())), 401)
    assert "EncodingAESKey is unusable" in caplog.text


def test_a_refused_request_does_not_burn_its_nonce(client, bot):
    # WeCom retries with the same query; a first failure must not make the retry a replay.
    query, body = wecom_callback(
        creds(), text_xml().replace("<MsgId>7385000000000000042</MsgId>\n", ""), nonce="424242"
    )
    assert post(client, bot, query, body).status_code == 400
    assert post(client, bot, *wecom_callback(creds(), text_xml(), nonce="424242")).status_code == 200


# -- send -------------------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeWeCom(corp_id=CORP_ID, corp_secret=SECRET, agent_id=AGENT_ID) as server:
        yield server


@pytest.fixture
def http():
    with httpx.Client(timeout=2.0) as client:
        yield client


@pytest.fixture
def sending_bot(bot, fake):
    bot.api_base_url = fake.url
    bot.save()
    return bot


def reply(text: str = "你好！有什么可以帮你？", touser: str = USER) -> OutboundReply:
    return OutboundReply(
        chat_id=touser,
        chat_type="p2p",
        sender_id=touser,
        text=text,
        reply_context={"touser": touser, "agent_id": str(AGENT_ID)},
        idempotency_key="1:0",
    )


def test_send_speaks_the_wecom_wire_format(sending_bot, fake, http):
    WeComAdapter(sending_bot).send(reply("hi there"), http)

    assert fake.sent == [
        {
            "touser": USER,
            "msgtype": "text",
            "agentid": AGENT_ID,
            "text": {"content": "hi there"},
            "enable_duplicate_check": 1,
            "duplicate_check_interval": 1800,
        }
    ]
    (token_request,) = fake.received(r"/cgi-bin/gettoken")
    assert token_request.method == "GET"
    assert token_request.query == {"corpid": [CORP_ID], "corpsecret": [SECRET]}
    (send_request,) = fake.received(r"/cgi-bin/message/send")
    assert send_request.method == "POST"
    assert send_request.query == {"access_token": ["tok-1"]}
    assert send_request.headers["content-type"] == "application/json"


def test_a_part_sent_again_within_the_interval_reaches_the_user_once(sending_bot, fake, http, settings):
    """A worker that died during a send leaves the part in doubt; its successor sends the
    same request again, and WeCom's duplicate check drops it."""
    settings.WECOM_DUPLICATE_CHECK_INTERVAL = 600
    WeComAdapter(sending_bot).send(reply("only once"), http)
    WeComAdapter(sending_bot).send(reply("only once"), http)

    assert [m["text"]["content"] for m in fake.sent] == ["only once"]
    assert len(fake.duplicates_dropped) == 1
    assert {r.json()["duplicate_check_interval"] for r in fake.received(r"/message/send")} == {600}


def test_the_token_is_fetched_once_and_shared_across_sends(sending_bot, fake, http):
    WeComAdapter(sending_bot).send(reply("one"), http)
    WeComAdapter(sending_bot).send(reply("two"), http)  # a new instance: the cache is Redis

    assert len(fake.received(r"/cgi-bin/gettoken")) == 1
    assert [m["text"]["content"] for m in fake.sent] == ["one", "two"]


def test_an_expired_token_is_replaced_and_the_send_retried_once(sending_bot, fake, http):
    WeComAdapter(sending_bot).send(reply("before"), http)
    fake.expire_token()

    WeComAdapter(sending_bot).send(reply("after"), http)

    assert len(fake.received(r"/cgi-bin/gettoken")) == 2
    used = [r.query["access_token"][0] for r in fake.received(r"/cgi-bin/message/send")]
    assert used == ["tok-1", "tok-1", "tok-2"]
    assert [m["text"]["content"] for m in fake.sent] == ["before", "after"]


def test_a_token_refused_twice_is_a_temporary_failure(sending_bot, fake, http):
    refused = Fault(200, {"errcode": 40014, "errmsg": "invalid access_token"})
    fake.plan(r"/cgi-bin/message/send", refused, refused)

    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)

    assert caught.value.permanent is False
    assert len(fake.received(r"/cgi-bin/message/send")) == 2  # one retry, not a loop


@pytest.mark.parametrize(
    ("errcode", "errmsg", "hint"),
    [
        (60020, "not allow to access from your ip, hint: [1], from ip: 203.0.113.9", "企业可信IP"),
        (81013, "user & party & tag all invalid", "可见范围"),
        (40056, "invalid agentid", "agent_id"),
        (45002, "content size out of limit", "2048 bytes"),
        (48002, "api forbidden", "permission"),
    ],
)
def test_refusals_that_a_retry_cannot_fix_are_permanent(sending_bot, fake, http, errcode, errmsg, hint):
    fake.plan(r"/cgi-bin/message/send", Fault(200, {"errcode": errcode, "errmsg": errmsg}))

    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)

    assert caught.value.permanent is True
    assert f"errcode {errcode}" in str(caught.value) and errmsg in str(caught.value) and hint in str(caught.value)


@pytest.mark.parametrize(("errcode", "errmsg"), [(-1, "system busy"), (45009, "reach max api daily quota limit")])
def test_busy_and_rate_limited_are_temporary(sending_bot, fake, http, errcode, errmsg):
    fake.plan(r"/cgi-bin/message/send", Fault(200, {"errcode": errcode, "errmsg": errmsg}))
    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)
    assert caught.value.permanent is False


@pytest.mark.parametrize(("status", "permanent"), [(503, False), (502, False), (429, False), (404, True)])
def test_http_errors(sending_bot, fake, http, status, permanent):
    fake.plan(r"/cgi-bin/message/send", Fault(status, {"error": "upstream"}))
    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)
    assert caught.value.permanent is permanent
    assert str(status) in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [pytest.param("<html>gateway</html>", id="not-json"), pytest.param({"msgid": "x"}, id="no-errcode")],
)
def test_an_answer_that_is_not_wecom_is_not_taken_as_delivered(sending_bot, fake, http, body):
    fake.plan(r"/cgi-bin/message/send", Fault(200, body))
    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)
    assert caught.value.permanent is False


def test_a_timeout_is_temporary(sending_bot, fake):
    fake.plan(r"/cgi-bin/message/send", Fault(delay=1.0, passthrough=True))
    with httpx.Client(timeout=0.2) as http, pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)
    assert caught.value.permanent is False
    assert "timed out" in str(caught.value)


def test_a_refused_connection_is_temporary(sending_bot, http):
    sending_bot.api_base_url = "http://127.0.0.1:1"  # nothing listens on port 1
    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)
    assert caught.value.permanent is False


@pytest.mark.parametrize(("field", "value", "errcode"), [("app_secret", "wrong", 40001), ("app_id", "wwwrong", 40013)])
def test_wrong_credentials_are_permanent_and_named(sending_bot, fake, http, field, value, errcode):
    setattr(sending_bot, field, value)
    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)
    assert caught.value.permanent is True
    assert f"gettoken refused: errcode {errcode}" in str(caught.value)
    assert fake.sent == []


def test_a_user_wecom_skipped_is_a_permanent_failure(sending_bot, fake, http):
    fake.plan(r"/cgi-bin/message/send", Fault(200, {"errcode": 0, "errmsg": "ok", "invaliduser": USER}))
    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)
    assert caught.value.permanent is True


def test_an_unknown_user_is_a_permanent_failure(bot, http):
    with FakeWeCom(corp_id=CORP_ID, corp_secret=SECRET, agent_id=AGENT_ID, users={"LiSi"}) as fake:
        bot.api_base_url = fake.url
        with pytest.raises(TransportError) as caught:
            WeComAdapter(bot).send(reply(), http)
    assert caught.value.permanent is True and "errcode 81013" in str(caught.value)


def test_a_bot_without_agent_id_cannot_send(sending_bot, fake, http):
    sending_bot.extra = {}
    with pytest.raises(TransportError) as caught:
        WeComAdapter(sending_bot).send(reply(), http)
    assert caught.value.permanent is True and "agent_id" in str(caught.value)
    assert fake.requests == []


def test_neither_secret_nor_token_reaches_the_log(sending_bot, fake, http, caplog):
    caplog.set_level(logging.DEBUG)
    # An operator debugging sends turns httpx's request log on; it must stay clean then too.
    caplog.set_level(logging.DEBUG, logger="httpx")
    adapter = WeComAdapter(sending_bot)
    adapter.send(reply("one"), http)
    fake.expire_token()
    adapter.send(reply("two"), http)
    fake.plan(r"/cgi-bin/message/send", Fault(200, {"errcode": 60020, "errmsg": "not allow"}))
    with pytest.raises(TransportError) as caught:
        adapter.send(reply("three"), http)

    assert "/cgi-bin/gettoken" in caplog.text  # httpx did log the requests…
    for secret in (SECRET, "tok-1", "tok-2"):  # …without what their query strings carried
        assert secret not in caplog.text
        assert secret not in str(caught.value)


def test_long_replies_split_by_the_adapters_policy_fit_wecom(sending_bot, fake, http):
    # 3 bytes per character: a limit counted in characters would make WeCom refuse (45002).
    # No two parts alike: WeCom's duplicate check would show the second of two once.
    text = "".join(chr(0x4E00 + n) for n in range(1500)) + "\n\n" + "".join(chr(0x6000 + n) for n in range(2500))
    parts = split_reply(text, WeComAdapter.max_reply_length, WeComAdapter.length_unit)
    adapter = WeComAdapter(sending_bot)
    for part in parts:
        adapter.send(reply(part), http)

    assert len(parts) > 2
    assert "".join(m["text"]["content"] for m in fake.sent) == text
