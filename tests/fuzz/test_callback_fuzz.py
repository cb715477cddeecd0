"""Property tests of the callback view over the WeCom and Feishu adapters' verify and
parse: whatever arrives, the answer is never a 500 (the test client re-raises anything
escaping the view) and no message is recorded without a valid signature."""

from __future__ import annotations

import base64
import os
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bots.models import Bot
from channels_app.adapters.feishu import crypto as feishu_crypto
from channels_app.models import InboundMessage
from tests.fakes.feishu import feishu_callback, feishu_event
from tests.fakes.wecom import wecom_callback, wecom_envelope, wecom_text_xml
from tests.fuzz.hostile import depths, nested_json, nested_xml

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REFUSED = {400, 401, 403, 404, 409}
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
feishu_shaped = st.fixed_dictionaries(
    {},
    optional={
        "encrypt": st.text(max_size=80) | json_values,
        "challenge": json_values,
        "token": json_values,
        "type": st.sampled_from(["url_verification", "event_callback"]) | json_values,
        "schema": st.just("2.0") | json_values,
        "header": json_values,
        "event": json_values,
    },
)
xml_texts = st.builds(
    lambda tag, text, inner: f"<xml><{tag}>{text}</{tag}>{inner}</xml>",
    st.sampled_from(["ToUserName", "Encrypt", "AgentID", "MsgType"]),
    st.text(max_size=40),
    st.sampled_from(["", "<Encrypt>AAAA</Encrypt>", "<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", "<a><b></a>"]),
)


@pytest.fixture
def bots(db):
    return {
        "wecom": Bot.objects.create(
            name="fuzz-wecom",
            platform="wecom",
            app_id="wwfuzz",
            app_secret="s",
            token=secrets.token_urlsafe(12),
            encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
            extra={"agent_id": 1000002},
        ),
        "feishu": Bot.objects.create(
            name="fuzz-feishu",
            platform="feishu",
            app_id="cli_fuzz",
            app_secret="s",
            token="fuzz-verification-token",
            encoding_aes_key="fuzz-encrypt-key",
        ),
    }


def assert_nothing_recorded() -> None:
    assert InboundMessage.objects.count() == 0


@FUZZ
@given(
    body=st.binary(max_size=2000),
    query=st.dictionaries(st.sampled_from(["msg_signature", "timestamp", "nonce", "echostr"]), st.text(max_size=40)),
)
def test_random_bytes_are_refused_without_a_500(client, bots, body, query):
    for platform in ("wecom", "feishu"):
        response = client.post(
            bots[platform].callback_path,
            body,
            content_type="application/octet-stream",
            QUERY_STRING="&".join(f"{k}={v}" for k, v in query.items()),
        )
        assert response.status_code in REFUSED, (platform, response.status_code, response.content)
    assert_nothing_recorded()


@FUZZ
@given(xml=xml_texts)
def test_random_xml_to_wecom_is_refused(client, bots, xml):
    response = client.post(bots["wecom"].callback_path, xml.encode(), content_type="text/xml")
    assert response.status_code in REFUSED
    assert_nothing_recorded()


@FUZZ
@given(document=feishu_shaped | json_values)
def test_random_json_to_feishu_is_refused(client, bots, document):
    headers, body = feishu_callback(document if isinstance(document, dict) else {"x": document}, encrypt_key=None)
    # Without the signature headers a Feishu bot with an Encrypt Key accepts nothing.
    response = client.post(bots["feishu"].callback_path, body, content_type="application/json")
    assert response.status_code in REFUSED, response.content
    assert_nothing_recorded()


@FUZZ
@given(
    position=st.integers(min_value=0),
    replacement=st.sampled_from(B64),
    part=st.sampled_from(["encrypted", "signature", "timestamp"]),
)
def test_a_mutated_signed_wecom_callback_is_refused(client, bots, position, replacement, part):
    bot = bots["wecom"]
    # The valid request, taken apart so one piece can be changed.
    from channels_app.crypto import WXBizMsgCrypt

    encrypted = WXBizMsgCrypt(bot.encoding_aes_key, bot.app_id).encrypt(
        wecom_text_xml(bot.app_id, "u", "hi", 42, 1000002)
    )
    query, body = wecom_envelope(bot, encrypted, "1000002", None, None)
    if part == "encrypted":
        index = position % len(encrypted)
        if encrypted[index] == replacement:
            replacement = "A" if replacement != "A" else "B"
        query, body = wecom_envelope(bot, encrypted, "1000002", None, None)  # signed over the original
        body = body.replace(encrypted.encode(), (encrypted[:index] + replacement + encrypted[index + 1 :]).encode())
    elif part == "signature":
        query = query.replace("msg_signature=", f"msg_signature={replacement.lower()}", 1)
    else:
        query = query.replace("timestamp=", "timestamp=1", 1)  # ten times as old, or unreadable
    response = client.post(f"{bot.callback_path}?{query}", body, content_type="text/xml")
    assert response.status_code in REFUSED, (part, response.status_code)
    assert_nothing_recorded()


@FUZZ
@given(
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
    header=st.sampled_from(["body", "X-Lark-Signature", "X-Lark-Request-Timestamp", "X-Lark-Request-Nonce"]),
)
def test_a_mutated_signed_feishu_callback_is_refused(client, bots, position, flip, header):
    bot = bots["feishu"]
    event = feishu_event(bot.app_id, bot.token, f"om_{secrets.token_hex(6)}", "oc_1", "p2p", "ou_1", "hi")
    headers, body = feishu_callback(event, bot.encoding_aes_key)
    if header == "body":
        index = position % len(body)
        body = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    else:
        value = headers[header]
        index = position % len(value)
        headers[header] = value[:index] + chr(ord(value[index]) ^ (flip % 64 or 1)) + value[index + 1 :]
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "Content-Type"}
    response = client.post(bot.callback_path, body, content_type="application/json", **extra)
    assert response.status_code in REFUSED, (header, response.status_code)
    assert_nothing_recorded()


@FUZZ
@given(depth=depths(), kind=st.sampled_from(["object", "array"]), where=st.sampled_from(["body", "encrypted"]))
def test_deep_nesting_is_refused_before_and_after_decryption(client, bots, depth, kind, where):
    """Feishu reads the body before it can check a signature (url_verification is not
    signed): a body nested past any parser's recursion must be refused, not raise."""
    feishu = bots["feishu"]
    body = nested_json(depth, kind)
    if where == "encrypted":  # what the bot's own Encrypt Key decrypts to
        encrypted = feishu_crypto.encrypt(body.decode(), feishu.encoding_aes_key)
        body = b'{"encrypt": "' + encrypted.encode() + b'"}'
    response = client.post(feishu.callback_path, body, content_type="application/json")
    assert response.status_code in REFUSED, (response.status_code, response.content)
    wecom = bots["wecom"]
    query, xml = wecom_callback(wecom, nested_xml(depth).decode())
    assert client.post(f"{wecom.callback_path}?{query}", xml, content_type="text/xml").status_code < 500
    assert_nothing_recorded()


def test_the_unmutated_requests_are_accepted(client, bots):
    """The mutation tests above mean something only if the same requests, unchanged, pass."""
    wecom = bots["wecom"]
    query, body = wecom_callback(wecom, wecom_text_xml(wecom.app_id, "u", "hi", 42, 1000002))
    assert client.post(f"{wecom.callback_path}?{query}", body, content_type="text/xml").status_code == 200
    feishu = bots["feishu"]
    headers, body = feishu_callback(
        feishu_event(feishu.app_id, feishu.token, "om_ok", "oc_1", "p2p", "ou_1", "hi"), feishu.encoding_aes_key
    )
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "Content-Type"}
    assert client.post(feishu.callback_path, body, content_type="application/json", **extra).status_code == 200
    assert InboundMessage.objects.count() == 2
