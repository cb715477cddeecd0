"""WeChat Official Account callbacks through the real view (PostgreSQL, Redis): the URL
check, the three message modes, the published vectors, and the bad-callback corpus.
The bots here use the customer-service API, so every callback is answered at once."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qsl, urlencode

import defusedxml.ElementTree as SafeET
import pytest

from channels_app.adapters.wechat_mp.adapter import WeChatMPAdapter, url_signature
from channels_app.adapters.wechat_mp.passive import PART_LIMIT_BYTES
from channels_app.adapters.wechat_mp.tests.support import (
    ACCOUNT,
    AES_KEY,
    APP_ID,
    OPENID,
    OTHER_AES_KEY,
    callback,
    creds,
    deliver,
    fixture,
    post,
    text_xml,
)
from channels_app.crypto import WXBizMsgCrypt, signature
from channels_app.crypto.tests.vectors import vector
from channels_app.models import InboundMessage, MessageStatus
from channels_app.registry import adapter_for
from tests.fakes.wechat_mp import mp_encrypted_envelope, mp_url_verification

MODES = ["plain", "compatible", "safe"]


@pytest.fixture
def cs_bot(make_mp_bot):
    def make(mode: str = "safe", **fields):
        return make_mp_bot(mode, customer_service=True, **fields)

    return make


def assert_refused(response, status: int) -> None:
    assert response.status_code == status, response.content
    assert not InboundMessage.objects.exists()


def test_the_registry_serves_wechat_mp_with_this_adapter(make_mp_bot):
    assert adapter_for("wechat_mp") is WeChatMPAdapter
    assert (WeChatMPAdapter.max_reply_length, WeChatMPAdapter.length_unit) == (2048, "bytes")
    # Passive replies also carry our own short lines, so their parts are smaller.
    assert WeChatMPAdapter(make_mp_bot(customer_service=False)).max_reply_length == PART_LIMIT_BYTES < 2048
    assert WeChatMPAdapter(make_mp_bot(customer_service=True)).max_reply_length == 2048


# -- URL verification (GET) ----------------------------------------------------------------

# wechatpy's published check_signature vector.
WECHATPY = {
    "token": "test",
    "timestamp": "1410685589",
    "nonce": "test",
    "signature": "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff",
}


def test_url_signature_matches_the_published_vector():
    assert url_signature(WECHATPY["token"], WECHATPY["timestamp"], WECHATPY["nonce"]) == WECHATPY["signature"]


@pytest.mark.parametrize("mode", ["plain", "safe"])
def test_url_verification_vector_answers_the_echostr_unchanged(client, make_mp_bot, settings, mode):
    settings.CALLBACK_TIMESTAMP_WINDOW = 10**10  # the vector is from 2014
    bot = make_mp_bot(mode, token=WECHATPY["token"])
    query = urlencode(
        {
            "signature": WECHATPY["signature"],
            "echostr": "7392416380139218542",
            "timestamp": WECHATPY["timestamp"],
            "nonce": WECHATPY["nonce"],
        }
    )

    response = client.get(f"{bot.callback_path}?{query}")

    assert (response.status_code, response.content) == (200, b"7392416380139218542")
    assert response["Content-Type"] == "text/plain"


def test_url_verification_with_a_fresh_timestamp(client, cs_bot):
    bot = cs_bot()
    response = client.get(f"{bot.callback_path}?{mp_url_verification(creds(), 'echo-5927352381')}")
    assert (response.status_code, response.content) == (200, b"echo-5927352381")


def test_url_verification_checks_the_timestamp(client, make_mp_bot):
    bot = make_mp_bot(token=WECHATPY["token"])
    query = urlencode({**{k: WECHATPY[k] for k in ("signature", "timestamp", "nonce")}, "echostr": "123456"})
    response = client.get(f"{bot.callback_path}?{query}")
    assert response.status_code == 401 and b"123456" not in response.content


def test_url_verification_with_another_token_is_refused(client, cs_bot):
    bot = cs_bot()
    response = client.get(f"{bot.callback_path}?{mp_url_verification(creds(token='another'), '123456')}")
    assert response.status_code == 401 and b"123456" not in response.content


@pytest.mark.parametrize("missing", ["signature", "timestamp", "nonce", "echostr"])
def test_url_verification_without_a_field_is_malformed(client, cs_bot, missing):
    bot = cs_bot()
    query = "&".join(p for p in mp_url_verification(creds(), "123456").split("&") if not p.startswith(f"{missing}="))
    assert client.get(f"{bot.callback_path}?{query}").status_code == 400


# -- messages (POST) -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_text_message_is_recorded_and_answered_success(client, cs_bot, mode):
    bot = cs_bot(mode)
    delivery = deliver(client, bot, mode, text_xml("今天上海天气怎么样？", 24587600000000011))

    assert (delivery.status, delivery.body) == (200, b"success")
    row = InboundMessage.objects.get()
    assert row.bot == bot and row.platform_message_id == "24587600000000011"
    assert (row.chat_id, row.chat_type, row.sender_id) == (OPENID, "p2p", OPENID)
    assert row.text == "今天上海天气怎么样？" and row.mentioned is True
    assert row.status == MessageStatus.RECEIVED
    assert row.raw["reply_context"] == {
        "openid": OPENID,
        "msgid": "24587600000000011",
        "question": "今天上海天气怎么样？",
    }
    assert row.raw["event"]["ToUserName"] == ACCOUNT


def test_compatible_mode_trusts_only_the_encrypted_copy(client, cs_bot):
    # The plaintext fields next to Encrypt are signed by nothing.
    bot = cs_bot("compatible")
    query, body = callback("compatible", text_xml("the real question", 24587600000000012))
    forged = body.replace(b"the real question", b"a forged question").replace(b"24587600000000012", b"1")
    assert forged != body

    assert post(client, bot, query, forged).status_code == 200
    row = InboundMessage.objects.get()
    assert (row.text, row.platform_message_id) == ("the real question", "24587600000000012")


@pytest.mark.parametrize(("signed_id", "decrypt_id", "compatible"), [("v15", "v16", True), ("v17", "v18", False)])
def test_published_message_vectors_through_the_view(client, cs_bot, settings, signed_id, decrypt_id, compatible):
    # Each pair is one real callback of the official samples: the signature over a
    # ciphertext, and its plaintext (v16's sample body is compatible mode).
    signed, decrypted = vector(signed_id)["inputs"], vector(decrypt_id)
    settings.CALLBACK_TIMESTAMP_WINDOW = 10**10
    bot = cs_bot(
        app_id=decrypted["expected"]["receiveid"],
        token=signed["token"],
        encoding_aes_key=decrypted["inputs"]["encoding_aes_key"],
    )
    assert signed["encrypt"] == decrypted["inputs"]["encrypt"]
    expected_xml = decrypted["expected"]["msg"]
    plain_fields = expected_xml.split("\n", 1)[1].rsplit("</xml>", 1)[0] if compatible else ""
    query = urlencode(
        {
            "signature": url_signature(signed["token"], signed["timestamp"], signed["nonce"]),
            "timestamp": signed["timestamp"],
            "nonce": signed["nonce"],
            "encrypt_type": "aes",
            "msg_signature": vector(signed_id)["expected"]["msg_signature"],
        }
    )
    body = (
        f"<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n{plain_fields}"
        f"<Encrypt><![CDATA[{signed['encrypt']}]]></Encrypt>\n</xml>"
    )

    response = post(client, bot, query, body.encode())

    assert (response.status_code, response.content) == (200, b"success")
    row = InboundMessage.objects.get()
    expected = {
        "v16": ("6054768590064713728", "oyORnuP8q7ou2gfYjqLzSIWZf0rs", "abcdteT"),
        "v18": ("6057404712141979648", "oyORnuP8q7ou2gfYjqLzSIWZf0rs", "abcdteT"),
    }[decrypt_id]
    assert (row.platform_message_id, row.sender_id, row.text) == expected


@pytest.mark.parametrize("vector_id", ["v13", "v14"])
def test_passive_replies_are_sealed_as_the_published_vectors(make_mp_bot, vector_id):
    inputs, expected = vector(vector_id)["inputs"], vector(vector_id)["expected"]
    bot = make_mp_bot(app_id=inputs["receiveid"], encoding_aes_key=inputs["encoding_aes_key"], token="pamtest")

    envelope = WeChatMPAdapter(bot).seal_reply(
        inputs["msg"], "1409304348", "xxxxxx", random16=inputs["random"].encode()
    )

    fields = {child.tag: child.text for child in SafeET.fromstring(envelope)}
    assert fields == {
        "Encrypt": expected["encrypt"],
        "TimeStamp": "1409304348",
        "Nonce": "xxxxxx",
        "MsgSignature": signature("pamtest", "1409304348", "xxxxxx", expected["encrypt"]),
    }


@pytest.mark.parametrize("mode", ["plain", "safe"])
@pytest.mark.parametrize(
    ("fixture_name", "recorded"),
    [
        ("text_message.xml", True),
        ("subscribe_event.xml", False),
        ("click_event.xml", False),
        ("image_message.xml", False),
        ("voice_message.xml", False),
    ],
)
def test_fixtures(client, cs_bot, mode, fixture_name, recorded):
    delivery = deliver(client, cs_bot(mode), mode, fixture(fixture_name))
    assert (delivery.status, delivery.body) == (200, b"success")
    assert InboundMessage.objects.exists() is recorded


@pytest.mark.parametrize("fixture_name", ["subscribe_event.xml", "click_event.xml", "image_message.xml"])
def test_events_are_acknowledged_at_once_in_passive_mode_too(client, make_mp_bot, fixture_name):
    # Nothing will answer an event: waiting for a reply would only hold the connection.
    delivery = deliver(client, make_mp_bot("safe"), "safe", fixture(fixture_name))
    assert (delivery.status, delivery.body) == (200, b"success")
    assert delivery.seconds < 1.0


def test_a_redelivery_with_a_new_nonce_is_not_recorded_twice(client, cs_bot):
    bot = cs_bot()
    xml = text_xml()
    assert deliver(client, bot, "safe", xml, nonce="1111111111").status == 200
    assert deliver(client, bot, "safe", xml, nonce="2222222222").status == 200
    assert InboundMessage.objects.count() == 1


@pytest.mark.parametrize("mode", ["plain", "safe"])
def test_an_unchanged_redelivery_is_let_through(client, cs_bot, mode):
    # WeChat may repeat a timed-out request as it was: same nonce, same body.
    bot = cs_bot(mode)
    query, body = callback(mode, text_xml())
    assert post(client, bot, query, body).status_code == 200
    assert post(client, bot, query, body).status_code == 200
    assert InboundMessage.objects.count() == 1


def test_a_captured_plaintext_query_with_another_body_is_a_replay(client, cs_bot):
    # Plaintext mode signs only token, timestamp and nonce: a captured query could carry
    # any body. The nonce remembers the body it came with.
    bot = cs_bot("plain")
    query, body = callback("plain", text_xml("hello", 24587600000000021))
    assert post(client, bot, query, body).status_code == 200
    forged = text_xml("transfer everything", 24587600000000022).encode()
    assert post(client, bot, query, forged).status_code == 409
    assert list(InboundMessage.objects.values_list("text", flat=True)) == ["hello"]


# -- the bad-callback corpus: every one a 4xx, no row, never a 500 -----------------------------


@pytest.mark.parametrize("mode", ["plain", "safe"])
def test_forged_signature(client, cs_bot, mode):
    query, body = callback(mode, text_xml(), creds(token="not-the-token"))
    assert_refused(post(client, cs_bot(mode), query, body), 401)


@pytest.mark.parametrize(("mode", "field"), [("plain", "signature"), ("safe", "msg_signature")])
def test_signature_with_non_ascii_characters(client, cs_bot, mode, field):
    query, body = callback(mode, text_xml())
    params = dict(parse_qsl(query))
    params[field] = "签" + params[field][1:]
    assert_refused(post(client, cs_bot(mode), urlencode(params), body), 401)


@pytest.mark.parametrize("mode", ["plain", "safe"])
# Past the 300 s window by a margin: int(time()) rounds down, so +301 could land inside.
@pytest.mark.parametrize("offset", [-305, +305])
def test_stale_or_future_timestamp(client, cs_bot, mode, offset):
    query, body = callback(mode, text_xml(), timestamp=int(time.time()) + offset)
    assert_refused(post(client, cs_bot(mode), query, body), 401)


def test_wrong_aes_key(client, cs_bot, caplog):
    bot = cs_bot(encoding_aes_key=OTHER_AES_KEY)
    assert_refused(post(client, bot, *callback("safe", text_xml())), 401)
    assert "EncodingAESKey differs" in caplog.text


def test_a_message_for_another_appid(client, cs_bot, caplog):
    bot = cs_bot()
    assert_refused(post(client, bot, *callback("safe", text_xml(), creds(app_id="wxanotherapp00001"))), 401)
    assert "wxanotherapp00001" in caplog.text and APP_ID in caplog.text


def _ciphertext() -> bytes:
    return base64.b64decode(WXBizMsgCrypt(AES_KEY, APP_ID).encrypt(text_xml()))


@pytest.mark.parametrize(
    ("encrypt", "status"),
    [
        pytest.param(base64.b64encode(_ciphertext()[:-5]).decode(), 400, id="truncated-mid-block"),
        pytest.param(base64.b64encode(_ciphertext()[:-32]).decode(), 401, id="truncated-whole-blocks"),
        pytest.param("@@not*base64@@", 400, id="not-base64"),
    ],
)
def test_broken_ciphertext_signed_with_the_right_token(client, cs_bot, encrypt, status):
    assert_refused(post(client, cs_bot(), *mp_encrypted_envelope(creds(), encrypt)), status)


@pytest.mark.parametrize("mode", ["plain", "safe"])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<xml><Encrypt>abc</Encrypt", id="unclosed"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"Encrypt": "abc", "MsgType": "text"}', id="json"),
    ],
)
def test_malformed_body(client, cs_bot, mode, body):
    query, _ = callback(mode, text_xml())
    assert_refused(post(client, cs_bot(mode), query, body), 400)


@pytest.mark.parametrize("body", [b"<xml><ToUserName>x</ToUserName></xml>", b"<xml><Encrypt></Encrypt></xml>"])
def test_safe_mode_body_without_ciphertext(client, cs_bot, body):
    query, _ = callback("safe", text_xml())
    assert_refused(post(client, cs_bot(), query, body), 400)


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
)
XXE = '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize("mode", ["plain", "safe"])
@pytest.mark.parametrize(("prolog", "entity"), [(BILLION_LAUGHS, "&lol3;"), (XXE, "&xxe;")], ids=["laughs", "xxe"])
def test_entity_tricks_in_the_body(client, cs_bot, mode, prolog, entity):
    query, body = callback(mode, text_xml())
    tag = b"<Encrypt>" if mode == "safe" else b"<Content>"
    body = prolog.encode() + body.replace(tag, tag + entity.encode(), 1)
    assert_refused(post(client, cs_bot(mode), query, body), 400)


def test_entity_tricks_inside_the_encrypted_message(client, cs_bot):
    # Signed and encrypted correctly, so only the parser of the decrypted XML stands guard.
    xml = BILLION_LAUGHS + text_xml().replace("<Content>", "<Content>&lol3;")
    assert_refused(post(client, cs_bot(), *callback("safe", xml)), 400)


@pytest.mark.parametrize("mode", ["plain", "safe"])
@pytest.mark.parametrize("field", ["MsgId", "FromUserName"])
def test_a_text_message_without_its_ids(client, cs_bot, mode, field):
    xml = "\n".join(line for line in text_xml().split("\n") if not line.startswith(f"<{field}>"))
    assert_refused(post(client, cs_bot(mode), *callback(mode, xml)), 400)


@pytest.mark.parametrize(
    ("mode", "missing"),
    [
        ("plain", "signature"),
        ("plain", "timestamp"),
        ("plain", "nonce"),
        ("safe", "msg_signature"),
        ("safe", "timestamp"),
        ("safe", "nonce"),
    ],
)
def test_missing_query_parameter(client, cs_bot, mode, missing):
    query, body = callback(mode, text_xml())
    query = "&".join(pair for pair in query.split("&") if not pair.startswith(f"{missing}="))
    assert_refused(post(client, cs_bot(mode), query, body), 400)


@pytest.mark.parametrize("timestamp", ["17e8", "１７００００００００", "9" * 5000, "-1"])
def test_timestamp_that_is_not_plain_seconds(client, cs_bot, timestamp):
    query, body = callback("safe", text_xml())
    query = "&".join(pair for pair in query.split("&") if not pair.startswith("timestamp="))
    assert_refused(post(client, cs_bot(), f"{query}&{urlencode({'timestamp': timestamp})}", body), 400)


def test_a_repeated_query_parameter(client, cs_bot):
    query, body = callback("safe", text_xml())
    assert_refused(post(client, cs_bot(), f"{query}&nonce=123", body), 400)


def test_an_unknown_encrypt_type(client, cs_bot):
    query, body = callback("safe", text_xml())
    assert_refused(post(client, cs_bot(), query.replace("encrypt_type=aes", "encrypt_type=sm4"), body), 400)


def test_a_plaintext_callback_to_a_bot_with_a_key_is_refused(client, cs_bot, caplog):
    # Otherwise anyone with one captured query could downgrade the bot to unsigned bodies.
    bot = cs_bot("safe")
    assert_refused(post(client, bot, *callback("plain", text_xml())), 401)
    assert "安全模式" in caplog.text


def test_oversized_body(client, cs_bot, settings):
    query, body = callback("safe", text_xml())
    padding = b" " * (settings.CALLBACK_MAX_BODY_BYTES + 1 - len(body))
    assert_refused(post(client, cs_bot(), query, body.replace(b"</xml>", padding + b"</xml>")), 413)


def test_unknown_bot(client, cs_bot):
    cs_bot()
    query, body = callback("safe", text_xml())
    response = client.post(
        f"/callback/wechat_mp/00000000-0000-4000-8000-000000000000/?{query}", data=body, content_type="text/xml"
    )
    assert_refused(response, 404)


def test_platform_mismatch(client, cs_bot):
    assert_refused(post(client, cs_bot(), *callback("safe", text_xml()), platform="wecom"), 404)


@pytest.mark.parametrize(("mode", "unset"), [("plain", "token"), ("safe", "token"), ("safe", "app_id")])
def test_a_bot_without_token_or_appid_refuses_everything(client, cs_bot, mode, unset):
    # With an empty Token anyone could compute the signature.
    bot = cs_bot(mode, **{unset: ""})
    assert_refused(post(client, bot, *callback(mode, text_xml(), creds(**{unset: ""}))), 401)


def test_a_bot_with_an_unusable_key_refuses_with_a_reason(client, cs_bot, caplog):
    bot = cs_bot(encoding_aes_key="too-short")
    assert_refused(post(client, bot, *callback("safe", text_xml())), 401)
    assert "EncodingAESKey is unusable" in caplog.text


def test_a_refused_request_does_not_burn_its_nonce(client, cs_bot):
    # Refused before the nonce is claimed, so WeChat's corrected retry is not a replay.
    bot = cs_bot()
    broken = "\n".join(line for line in text_xml().split("\n") if not line.startswith("<MsgId>"))
    assert post(client, bot, *callback("safe", broken, nonce="424242")).status_code == 400
    assert post(client, bot, *callback("safe", text_xml(), nonce="424242")).status_code == 200
