"""Feishu: crypto against the published vector, callbacks through the real view into
PostgreSQL and Redis, and sends against the fake Feishu Open API."""

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

from bots.models import Bot
from channels_app.adapters.feishu import crypto
from channels_app.adapters.feishu.adapter import FeishuAdapter
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.registry import adapter_for
from tests.fakes.feishu import FakeFeishu, feishu_callback, feishu_event
from tests.fakes.server import Fault

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# The fixtures' credentials.
VERIFICATION_TOKEN = "fixture-verification-token"
ENCRYPT_KEY = "fixture-encrypt-key"
APP_ID = "cli_a5f1c2d3e4b5a6c7"
# Whom group_text_mention.json mentions: the bot first, then Alice.
BOT_OPEN_ID = "ou_b07d5b6e1a2f3c4d5e6f708192a3b4c5"
ALICE_OPEN_ID = "ou_6a7b8c9d0e1f20314253647586970a1b"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def fresh(event: dict) -> dict:
    """A fixture as Feishu would push it now: a current create_time and a new event_id."""
    event = copy.deepcopy(event)
    event["header"]["create_time"] = str(int(time.time() * 1000))
    event["header"]["event_id"] = uuid.uuid4().hex
    return event


@pytest.fixture
def make_feishu_bot(make_bot):
    def make(**fields) -> Bot:
        return make_bot(
            **{
                "platform": "feishu",
                "extra": {},
                "app_id": APP_ID,
                "app_secret": "fixture-app-secret",
                "token": VERIFICATION_TOKEN,
                "encoding_aes_key": ENCRYPT_KEY,
                **fields,
            }
        )

    return make


@pytest.fixture
def bot(make_feishu_bot) -> Bot:
    return make_feishu_bot()


@pytest.fixture
def plain_bot(make_feishu_bot) -> Bot:
    """A bot whose Feishu app has no Encrypt Key: bodies arrive unencrypted and unsigned."""
    return make_feishu_bot(encoding_aes_key="")


def post(client, bot: Bot, headers: dict[str, str], body: bytes):
    headers = dict(headers)
    content_type = headers.pop("Content-Type", "application/json")
    return client.post(bot.callback_path, data=body, content_type=content_type, headers=headers)


def rows(bot: Bot):
    return InboundMessage.objects.filter(bot=bot)


def test_the_adapter_is_registered():
    assert adapter_for("feishu") is FeishuAdapter


# -- crypto ---------------------------------------------------------------------------


def test_decrypt_published_vector_v24():
    # vectors.json v24: the decrypt sample of Feishu's event-subscription docs.
    assert crypto.decrypt("P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=", "test key") == "hello world"


def test_encrypt_then_decrypt_gives_back_the_text_with_a_fresh_iv_each_time():
    first, second = crypto.encrypt("配置 ok ✓", "k"), crypto.encrypt("配置 ok ✓", "k")
    assert first != second
    assert crypto.decrypt(first, "k") == crypto.decrypt(second, "k") == "配置 ok ✓"


def test_signature_is_plain_sha256_hex_of_timestamp_nonce_key_and_raw_body():
    # Expected value from coreutils: printf '%s' '1700000000abckey{"encrypt":"x"}' | sha256sum
    expected = "d09e1d7455b3eb1cf4dc4030487b49e3c8908617c0ea1b0289497bda456c6a00"
    assert crypto.signature("1700000000", "abc", "key", b'{"encrypt":"x"}') == expected


@pytest.mark.parametrize(
    ("encrypted", "key", "fragment"),
    [
        ("P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=", "wrong key", "Encrypt Key is probably wrong"),
        ("P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEz", "test key", "truncated"),
        ("P37w+VZImNgPEO1RBhJ6", "test key", "truncated"),
        ("not base64 at all!", "test key", "not valid base64"),
        (12345, "test key", "not a string"),
    ],
)
def test_decrypt_failures_raise_decrypt_error(encrypted, key, fragment):
    with pytest.raises(crypto.DecryptError, match=fragment):
        crypto.decrypt(encrypted, key)


# -- url_verification ----------------------------------------------------------------


def test_url_verification_plain_echoes_the_challenge(client, plain_bot):
    response = post(client, plain_bot, {}, json.dumps(fixture("url_verification")).encode())
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"challenge": "ajls384kdjx98XX"}


def test_url_verification_encrypted_echoes_the_challenge_without_signature_headers(client, bot):
    # Feishu's SDK does not check a signature on url_verification; the token proves it.
    response = post(client, bot, {}, json.dumps(fixture("url_verification_encrypted")).encode())
    assert response.status_code == 200
    assert response.json() == {"challenge": "ajls384kdjx98XX"}


def test_url_verification_with_a_wrong_token_is_refused(client, plain_bot):
    body = {**fixture("url_verification"), "token": "someone else's token"}
    response = post(client, plain_bot, {}, json.dumps(body).encode())
    assert response.status_code == 401
    assert b"challenge" not in response.content


# -- messages in ----------------------------------------------------------------------


def test_signed_encrypted_p2p_text_is_recorded(client, bot):
    response = post(client, bot, *feishu_callback(fresh(fixture("p2p_text")), ENCRYPT_KEY))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.content == b"{}"
    row = rows(bot).get()
    assert row.status == MessageStatus.RECEIVED
    assert row.platform_message_id == "om_5ce6d572455d361153b7cb51da133945"
    assert row.chat_id == "oc_a0553eda9014c201e6969b478895c230"
    assert row.chat_type == "p2p"
    assert row.sender_id == "ou_84aad35d084aa403a838cf73ee18467"
    assert row.text == "What is the capital of Australia?"
    assert row.mentioned is True
    assert row.raw["reply_context"] == {
        "message_id": "om_5ce6d572455d361153b7cb51da133945",
        "chat_id": "oc_a0553eda9014c201e6969b478895c230",
    }
    # The stored event must not carry the Verification Token (it lives in the header).
    assert VERIFICATION_TOKEN not in json.dumps(row.raw)


def test_plain_p2p_text_is_recorded_when_the_bot_has_no_encrypt_key(client, plain_bot):
    response = post(client, plain_bot, *feishu_callback(fresh(fixture("p2p_text"))))
    assert response.status_code == 200
    assert rows(plain_bot).get().text == "What is the capital of Australia?"


def test_group_message_without_mention_is_acknowledged_but_not_recorded(client, bot):
    assert bot.require_mention_in_groups
    response = post(client, bot, *feishu_callback(fresh(fixture("group_text")), ENCRYPT_KEY))
    assert response.status_code == 200
    assert response.content == b"{}"
    assert not rows(bot).exists()


def test_group_message_with_mention_is_recorded_without_the_leading_placeholder(client, bot):
    response = post(client, bot, *feishu_callback(fresh(fixture("group_text_mention")), ENCRYPT_KEY))
    assert response.status_code == 200
    row = rows(bot).get()
    assert row.mentioned is True
    assert row.chat_type == "group"
    # Without bot_open_id the leading mention is taken as the address to the bot.
    assert row.text == "summarise what @Alice proposed"


def test_with_bot_open_id_the_bots_placeholder_is_dropped_wherever_it_is(client, make_feishu_bot):
    bot = make_feishu_bot(extra={"bot_open_id": BOT_OPEN_ID})
    event = feishu_event(
        APP_ID,
        VERIFICATION_TOKEN,
        "om_1",
        "oc_g",
        "group",
        "ou_sender",
        "what did @_user_1 say? @_user_2",
        [{"open_id": ALICE_OPEN_ID, "name": "Alice"}, {"open_id": BOT_OPEN_ID, "name": "Switchboard"}],
    )
    assert post(client, bot, *feishu_callback(event, ENCRYPT_KEY)).status_code == 200
    row = rows(bot).get()
    assert row.mentioned is True
    assert row.text == "what did @Alice say?"


def test_at_all_is_kept_readable_and_does_not_count_as_a_mention_of_the_bot(client, make_feishu_bot):
    bot = make_feishu_bot(extra={"bot_open_id": BOT_OPEN_ID})
    event = feishu_event(
        APP_ID,
        VERIFICATION_TOKEN,
        "om_3",
        "oc_g",
        "group",
        "ou_sender",
        "@_all standup moved; @_user_1 please remind everyone",
        [{"open_id": BOT_OPEN_ID, "name": "Switchboard"}],
    )
    assert post(client, bot, *feishu_callback(event, ENCRYPT_KEY)).status_code == 200
    assert rows(bot).get().text == "@all standup moved; please remind everyone"


def test_with_bot_open_id_a_group_message_mentioning_only_someone_else_is_not_for_us(client, make_feishu_bot):
    bot = make_feishu_bot(extra={"bot_open_id": BOT_OPEN_ID})
    event = feishu_event(
        APP_ID,
        VERIFICATION_TOKEN,
        "om_2",
        "oc_g",
        "group",
        "ou_sender",
        "@_user_1 lunch?",
        [{"open_id": ALICE_OPEN_ID, "name": "Alice"}],
    )
    assert post(client, bot, *feishu_callback(event, ENCRYPT_KEY)).status_code == 200
    assert not rows(bot).exists()


def test_a_group_mention_is_answered_when_the_bot_does_not_require_mentions(client, make_feishu_bot):
    bot = make_feishu_bot(require_mention_in_groups=False)
    assert post(client, bot, *feishu_callback(fresh(fixture("group_text")), ENCRYPT_KEY)).status_code == 200
    row = rows(bot).get()
    assert (row.mentioned, row.text) == (False, "Lunch at noon, anyone?")


@pytest.mark.parametrize(
    "change",
    ["non_message_event", "image_message", "bare_mention", "app_sender", "content_not_json", "odd_shapes"],
)
def test_events_without_a_question_are_acknowledged_and_not_recorded(client, bot, change):
    if change == "non_message_event":
        event = fresh(fixture("chat_member_bot_added"))
    else:
        event = fresh(fixture("group_text_mention"))
        message = event["event"]["message"]
        if change == "image_message":
            message.update(message_type="image", content='{"image_key":"img_v2_041b28e3-5680-48c2-9af2-497ace79333g"}')
        elif change == "bare_mention":
            message["content"] = '{"text":"@_user_1 "}'
        elif change == "app_sender":
            event["event"]["sender"]["sender_type"] = "app"
        elif change == "content_not_json":
            message["content"] = "@_user_1 hi"
        else:  # authentic but malformed: must be acknowledged, never a 500
            event["event"]["sender"], message["mentions"] = "ou_x", 7
    response = post(client, bot, *feishu_callback(event, ENCRYPT_KEY))
    assert response.status_code == 200
    assert response.content == b"{}"
    assert not rows(bot).exists()


def test_redelivery_with_a_new_nonce_is_recorded_once(client, bot):
    event = fresh(fixture("p2p_text"))
    first = post(client, bot, *feishu_callback(event, ENCRYPT_KEY, nonce="first-nonce"))
    again = post(client, bot, *feishu_callback(event, ENCRYPT_KEY, nonce="second-nonce"))
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == b"{}"
    assert rows(bot).count() == 1


def test_the_same_request_again_is_a_redelivery_and_a_reused_nonce_is_refused(client, bot):
    headers, body = feishu_callback(fresh(fixture("p2p_text")), ENCRYPT_KEY, nonce="once")
    assert post(client, bot, headers, body).status_code == 200
    assert post(client, bot, headers, body).content == b"{}"
    other = fresh(fixture("p2p_text"))
    other["event"]["message"]["message_id"] = "om_another"
    assert post(client, bot, *feishu_callback(other, ENCRYPT_KEY, nonce="once")).status_code == 409
    assert rows(bot).count() == 1


def test_a_plain_event_id_again_is_a_redelivery_but_not_with_another_body(client, plain_bot):
    # Nothing is signed without an Encrypt Key: the event id stays with its body.
    event = fresh(fixture("p2p_text"))
    headers, body = feishu_callback(event)
    assert post(client, plain_bot, headers, body).status_code == 200
    assert post(client, plain_bot, headers, body).status_code == 200
    event["event"]["message"]["message_id"] = "om_another"
    assert post(client, plain_bot, *feishu_callback(event)).status_code == 409
    assert rows(plain_bot).count() == 1


# -- the bad corpus: 4xx, never 500, nothing recorded, and refused for the right reason


def _signed(**changes) -> tuple[dict, bytes]:
    return feishu_callback(fresh(fixture("p2p_text")), ENCRYPT_KEY, **changes)


def _forged_signature():
    headers, body = _signed()
    return {**headers, "X-Lark-Signature": crypto.signature("1", "2", "a guessed key", body)}, body


def _truncated_ciphertext():
    # Signed correctly with the bot's key, so only the decryption can refuse it.
    encrypted = json.loads(_signed()[1])["encrypt"]
    body = json.dumps({"encrypt": encrypted[:-24]}).encode()
    headers = {"X-Lark-Request-Timestamp": str(int(time.time())), "X-Lark-Request-Nonce": uuid.uuid4().hex}
    headers["X-Lark-Signature"] = crypto.signature(*headers.values(), ENCRYPT_KEY, body)
    return headers, body


def _wrong_verification_token(token: str):
    event = fresh(fixture("p2p_text"))
    event["header"]["token"] = token
    return feishu_callback(event, ENCRYPT_KEY)


def _without_signature_headers():
    headers, body = _signed()
    return {"Content-Type": headers["Content-Type"]}, body


BAD_CORPUS = {
    "forged signature": (_forged_signature, 401, "X-Lark-Signature does not match"),
    "stale timestamp": (lambda: _signed(timestamp=int(time.time()) - 3600), 401, "refused (stale_timestamp)"),
    "wrong encrypt key": (lambda: feishu_callback(fresh(fixture("p2p_text")), "another key"), 401, "cannot decrypt"),
    "truncated ciphertext": (_truncated_ciphertext, 401, "truncated"),
    "malformed json": (lambda: ({}, b'{"encrypt": "abc'), 400, "the body is not JSON"),
    "json but not an object": (lambda: ({}, b'["encrypt"]'), 400, "not an object"),
    "wrong verification token": (lambda: _wrong_verification_token("other"), 401, "Verification Token does not"),
    "non-ascii verification token": (lambda: _wrong_verification_token("令牌"), 401, "Verification Token does not"),
    "signature headers missing": (_without_signature_headers, 401, "X-Lark-Signature is missing"),
    "timestamp not a number": (lambda: _signed(timestamp="soon"), 400, "X-Lark-Request-Timestamp is not an integer"),
}


@pytest.mark.parametrize("case", BAD_CORPUS)
def test_bad_corpus_is_refused_for_the_right_reason(client, bot, caplog, case):
    build, status, reason = BAD_CORPUS[case]
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, bot, *build())
    assert response.status_code == status
    assert reason in caplog.text
    assert not rows(bot).exists()


def test_encrypted_body_for_a_bot_without_encrypt_key_is_malformed(client, plain_bot, caplog):
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, plain_bot, *feishu_callback(fresh(fixture("p2p_text")), ENCRYPT_KEY))
    assert response.status_code == 400
    assert "this bot has no Encrypt Key" in caplog.text
    assert not rows(plain_bot).exists()


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ("no_token", 401, "Verification Token does not match"),
        ("stale_create_time", 401, "refused (stale_timestamp)"),
        ("create_time_not_a_number", 400, "header.create_time is not an integer"),
        ("no_event_id", 400, "the event has no id"),
    ],
)
def test_bad_plain_events_are_refused(client, plain_bot, caplog, change, status, reason):
    event = fresh(fixture("p2p_text"))
    if change == "no_token":
        del event["header"]["token"]
    elif change == "stale_create_time":
        event["header"]["create_time"] = str(int((time.time() - 3600) * 1000))
    elif change == "create_time_not_a_number":
        event["header"]["create_time"] = "yesterday"
    else:
        del event["header"]["event_id"]
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, plain_bot, *feishu_callback(event))
    assert response.status_code == status
    assert reason in caplog.text
    assert not rows(plain_bot).exists()


def v1_event(token: str = VERIFICATION_TOKEN) -> dict:
    return {
        "uuid": uuid.uuid4().hex,
        "token": token,
        "ts": f"{time.time():.7f}",
        "type": "event_callback",
        "event": {"type": "message", "msg_type": "text", "text": "hi", "open_chat_id": "oc_1"},
    }


def test_a_plain_v1_event_is_acknowledged_and_its_uuid_refused_with_another_body(client, plain_bot):
    event = v1_event()
    headers, body = feishu_callback(event)
    first, again = post(client, plain_bot, headers, body), post(client, plain_bot, headers, body)
    assert (first.status_code, first.content, again.status_code, again.content) == (200, b"{}", 200, b"{}")
    assert (
        post(client, plain_bot, *feishu_callback({**event, "event": {**event["event"], "text": "no"}})).status_code
        == 409
    )
    assert not rows(plain_bot).exists()  # only v2 im.message.receive_v1 carries messages we answer


def test_a_plain_body_that_is_neither_v1_nor_v2_is_malformed(client, plain_bot):
    body = json.dumps({"token": VERIFICATION_TOKEN, "type": "event_callback"}).encode()
    assert post(client, plain_bot, {}, body).status_code == 400


def test_a_bot_without_verification_token_refuses_everything(client, make_feishu_bot, caplog):
    bot = make_feishu_bot(token="")
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, bot, *feishu_callback(fresh(fixture("p2p_text")), ENCRYPT_KEY))
    assert response.status_code == 401
    assert "this bot has no Verification Token" in caplog.text


def test_an_oversized_body_is_refused_with_413(client, bot):
    body = b'{"encrypt": "' + b"A" * settings.CALLBACK_MAX_BODY_BYTES + b'"}'
    assert post(client, bot, {}, body).status_code == 413
    assert not rows(bot).exists()


def test_an_unknown_bot_is_404(client, db):
    headers, body = feishu_callback(fresh(fixture("p2p_text")), ENCRYPT_KEY)
    unknown = Bot(platform="feishu")  # unsaved: its uuid is in no row
    assert post(client, unknown, headers, body).status_code == 404
    assert not InboundMessage.objects.exists()


# -- messages out ---------------------------------------------------------------------

APP_SECRET = "s3cret-app-secret-never-logged"


@pytest.fixture
def feishu():
    with FakeFeishu() as fake:
        fake.add_app(APP_ID, APP_SECRET)
        yield fake


@pytest.fixture
def sending_bot(make_feishu_bot, feishu) -> Bot:
    return make_feishu_bot(api_base_url=feishu.url, app_secret=APP_SECRET)


@pytest.fixture
def http():
    with httpx.Client(timeout=2.0) as client:
        yield client


def reply(text: str = "Canberra.", key: str = "msg-1:0", message_id: str | None = "om_in", chat_id: str = "oc_chat"):
    context = {"chat_id": chat_id, **({"message_id": message_id} if message_id else {})}
    return OutboundReply(
        chat_id=chat_id, chat_type="p2p", sender_id="ou_user", text=text, reply_context=context, idempotency_key=key
    )


def test_default_api_base_is_feishu_and_lark_overrides_it(make_feishu_bot):
    assert FeishuAdapter(make_feishu_bot()).api_base == "https://open.feishu.cn"
    assert (
        FeishuAdapter(make_feishu_bot(api_base_url="https://open.larksuite.com/")).api_base
        == "https://open.larksuite.com"
    )


def test_a_reply_goes_to_the_reply_api_with_content_as_a_json_string_and_the_uuid(feishu, sending_bot, http):
    FeishuAdapter(sending_bot).send(reply("Canberra — 堪培拉.", key="msg-1:0"), http)
    [request] = feishu.received(r"/reply$")
    assert request.path == "/open-apis/im/v1/messages/om_in/reply"
    body = request.json()
    assert body["msg_type"] == "text"
    assert isinstance(body["content"], str) and json.loads(body["content"]) == {"text": "Canberra — 堪培拉."}
    assert body["uuid"] == "msg-1:0"
    assert [(m["reply_to"], m["text"]) for m in feishu.sent] == [("om_in", "Canberra — 堪培拉.")]


def test_without_a_message_id_it_sends_a_new_message_to_the_chat(feishu, sending_bot, http):
    FeishuAdapter(sending_bot).send(reply(message_id=None, chat_id="oc_group"), http)
    [request] = feishu.received(r"/im/v1/messages$")
    assert request.query == {"receive_id_type": ["chat_id"]}
    assert request.json()["receive_id"] == "oc_group"
    assert feishu.sent[0]["chat_id"] == "oc_group"


def test_the_token_is_fetched_once_and_shared_across_sends(feishu, sending_bot, http):
    FeishuAdapter(sending_bot).send(reply(key="a"), http)
    FeishuAdapter(sending_bot).send(reply(key="b"), http)  # a new adapter: the cache is in Redis
    assert feishu.tokens_issued() == 1
    [token_request] = feishu.received(r"/tenant_access_token/")
    assert token_request.json() == {"app_id": APP_ID, "app_secret": APP_SECRET}
    authorizations = {r.headers["authorization"] for r in feishu.received(r"/reply$")}
    assert len(authorizations) == 1 and authorizations.pop().startswith("Bearer t-")
    assert len(feishu.sent) == 2


def test_an_expired_token_is_forgotten_and_the_send_retried_once(feishu, sending_bot, http, caplog):
    FeishuAdapter(sending_bot).send(reply(key="a"), http)
    feishu.expire_tokens()
    with caplog.at_level(logging.DEBUG):
        FeishuAdapter(sending_bot).send(reply(key="b"), http)
    assert feishu.tokens_issued() == 2
    assert len(feishu.received(r"/reply$")) == 3  # a, b refused, b again
    assert [m["uuid"] for m in feishu.sent] == ["a", "b"]
    assert "refused the cached tenant_access_token" in caplog.text
    # Neither the secret nor any token reaches the log.
    tokens = {r.headers["authorization"].removeprefix("Bearer ") for r in feishu.received(r"/reply$")}
    assert len(tokens) == 2
    assert all(secret not in caplog.text for secret in (APP_SECRET, *tokens))


def test_a_token_refused_twice_is_a_transient_error_after_one_retry(feishu, sending_bot, http):
    refused = Fault(400, {"code": 99991663, "msg": "Invalid access token for authorization"})
    feishu.plan(r"/reply$", refused, refused)
    with pytest.raises(TransportError) as error:
        FeishuAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is False
    assert len(feishu.received(r"/reply$")) == 2
    assert feishu.tokens_issued() == 2


def test_the_same_idempotency_key_is_delivered_once(feishu, sending_bot, http):
    FeishuAdapter(sending_bot).send(reply(key="msg-7:0"), http)
    FeishuAdapter(sending_bot).send(reply(key="msg-7:0"), http)  # a retried task
    assert len(feishu.received(r"/reply$")) == 2
    assert len(feishu.sent) == 1


def test_long_idempotency_keys_fit_feishus_50_characters_and_stay_distinct(feishu, sending_bot, http):
    prefix = "x" * 60
    FeishuAdapter(sending_bot).send(reply("part one", key=f"{prefix}:0"), http)
    FeishuAdapter(sending_bot).send(reply("part two", key=f"{prefix}:1"), http)
    uuids = [r.json()["uuid"] for r in feishu.received(r"/reply$")]
    assert all(len(u) <= 50 for u in uuids) and uuids[0] != uuids[1]
    assert [m["text"] for m in feishu.sent] == ["part one", "part two"]


def test_a_timeout_is_transient_and_the_retry_does_not_deliver_twice(feishu, sending_bot):
    feishu.plan(r"/reply$", Fault(delay=0.8, passthrough=True))
    with httpx.Client(timeout=0.3) as impatient:
        with pytest.raises(TransportError) as error:
            FeishuAdapter(sending_bot).send(reply(key="msg-9:0"), impatient)
        assert error.value.permanent is False
        FeishuAdapter(sending_bot).send(reply(key="msg-9:0"), impatient)
    time.sleep(0.8)  # let the slow first request finish on the fake's side
    assert len(feishu.received(r"/reply$")) == 2
    assert len(feishu.sent) == 1


def test_http_429_is_transient_with_the_gateways_reset_as_retry_after(feishu, sending_bot, http):
    feishu.rate_limit(times=1, reset_seconds=3)
    with pytest.raises(TransportError) as error:
        FeishuAdapter(sending_bot).send(reply(), http)
    assert (error.value.permanent, error.value.retry_after) == (False, 3.0)
    assert feishu.sent == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault(400, {"code": 230020, "msg": "This operation triggers the frequency limit."}),
        Fault(400, {"code": 11232, "msg": "create message service trigger rate limit"}),
        Fault(500, {"code": 230099, "msg": "internal error"}),
        Fault(502, "<html><body>502 Bad Gateway</body></html>"),
    ],
    ids=["per-chat rate limit", "tenant rate limit", "server error", "proxy error page"],
)
def test_rate_limits_and_server_errors_are_transient(feishu, sending_bot, http, fault):
    feishu.plan(r"/reply$", fault)
    with pytest.raises(TransportError) as error:
        FeishuAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is False
    assert error.value.retry_after is None


def test_an_unreachable_feishu_is_transient(make_feishu_bot, http):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bot = make_feishu_bot(api_base_url=f"http://127.0.0.1:{port}", app_secret=APP_SECRET)
    with pytest.raises(TransportError) as error:
        FeishuAdapter(bot).send(reply(), http)
    assert error.value.permanent is False


def test_bot_removed_from_the_chat_is_permanent(feishu, sending_bot, http):
    feishu.chats_without_bot.add("oc_gone")
    with pytest.raises(TransportError) as error:
        FeishuAdapter(sending_bot).send(reply(message_id=None, chat_id="oc_gone"), http)
    assert error.value.permanent is True
    assert "230002" in str(error.value) and "not in this chat" in str(error.value)


def test_bad_parameters_are_permanent(feishu, sending_bot, http):
    feishu.plan(r"/reply$", Fault(400, {"code": 230001, "msg": "invalid message_id"}))
    with pytest.raises(TransportError) as error:
        FeishuAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_something_that_is_not_feishus_api_is_permanent(feishu, sending_bot, http):
    feishu.plan(r"/reply$", Fault(404, "<html><body>Not Found</body></html>"))
    with pytest.raises(TransportError, match="API base URL") as error:
        FeishuAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_a_reply_of_the_longest_length_fits_feishus_body_limit(feishu, sending_bot, http):
    # 4-byte characters, escaped as JSON twice (content is a JSON string in JSON): the worst case.
    text = "😀" * FeishuAdapter.max_reply_length
    FeishuAdapter(sending_bot).send(reply(text), http)
    assert feishu.sent[0]["text"] == text


def test_a_wrong_app_secret_is_permanent_and_not_repeated_in_the_error(feishu, make_feishu_bot, http):
    bot = make_feishu_bot(api_base_url=feishu.url, app_secret="an-outdated-secret")
    with pytest.raises(TransportError) as error:
        FeishuAdapter(bot).send(reply(), http)
    assert error.value.permanent is True
    assert "10014" in str(error.value) and "App Secret" in str(error.value)
    assert "an-outdated-secret" not in str(error.value)
    assert feishu.received(r"/reply$") == []
