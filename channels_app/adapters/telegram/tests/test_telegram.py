"""Telegram: webhook updates through the real view into PostgreSQL and Redis, and
sendMessage against the fake Bot API."""

from __future__ import annotations

import copy
import json
import logging
import socket
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from bots.models import Bot
from channels_app.adapters.telegram.adapter import TelegramAdapter
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.registry import adapter_for
from tests.fakes.server import Fault
from tests.fakes.telegram import FakeTelegram, entity, telegram_callback, telegram_update

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# The fixtures' bot: id 7000000002, @switchboard_demo_bot.
TOKEN = "7000000002:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
USERNAME = "switchboard_demo_bot"
SECRET = "fixture-webhook-secret_01"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture
def make_telegram_bot(make_bot):
    def make(**fields) -> Bot:
        return make_bot(
            **{
                "platform": "telegram",
                "extra": {"bot_username": USERNAME},
                "token": TOKEN,
                "app_secret": SECRET,
                **fields,
            }
        )

    return make


@pytest.fixture
def bot(make_telegram_bot) -> Bot:
    return make_telegram_bot()


def post(client, bot: Bot, headers: dict[str, str], body: bytes, path: str | None = None):
    headers = dict(headers)
    content_type = headers.pop("Content-Type", "application/json")
    return client.post(path or bot.callback_path, data=body, content_type=content_type, headers=headers)


def deliver(client, bot: Bot, update: dict, secret: str | None = SECRET):
    return post(client, bot, *telegram_callback(update, secret))


def rows(bot: Bot):
    return InboundMessage.objects.filter(bot=bot)


def test_the_adapter_is_registered():
    assert adapter_for("telegram") is TelegramAdapter


# -- messages in ----------------------------------------------------------------------


def test_a_private_text_is_recorded(client, bot):
    response = deliver(client, bot, fixture("private_text"))
    assert response.status_code == 200
    assert response.content == b""
    row = rows(bot).get()
    assert row.status == MessageStatus.RECEIVED
    assert row.platform_message_id == "5123456789:1365"
    assert (row.chat_id, row.chat_type, row.sender_id) == ("5123456789", "p2p", "5123456789")
    assert row.text == "What is the capital of Australia?"
    assert row.mentioned is True
    assert row.raw["reply_context"] == {"chat_id": 5123456789, "message_id": 1365}
    assert row.raw["event"]["update_id"] == 871234501


def test_a_group_mention_after_an_emoji_is_found_by_utf16_offsets_and_removed(client, bot):
    # "🚀" is two UTF-16 units: the mention's offset is 3, not 2.
    assert deliver(client, bot, fixture("group_mention")).status_code == 200
    row = rows(bot).get()
    assert (row.chat_type, row.mentioned, row.chat_id) == ("group", True, "-1001234567890")
    assert row.text == "🚀 summarise what @grace_h proposed"
    assert row.platform_message_id == "-1001234567890:88"


def test_a_command_addressed_to_the_bot_keeps_the_command(client, bot):
    assert deliver(client, bot, fixture("group_command")).status_code == 200
    row = rows(bot).get()
    assert (row.mentioned, row.text) == (True, "/ask how long is a fortnight?")


def test_a_reply_to_the_bots_message_is_addressed_to_it(client, make_telegram_bot):
    bot = make_telegram_bot(extra={})  # known by the id in its token, without bot_username
    assert deliver(client, bot, fixture("group_reply_to_bot")).status_code == 200
    row = rows(bot).get()
    assert (row.mentioned, row.text) == (True, "and a month?")


def test_a_reply_to_someone_else_is_not_for_the_bot(client, bot):
    update = fixture("group_reply_to_bot")
    update["message"]["reply_to_message"]["from"] = {"id": 6234567890, "is_bot": False, "first_name": "Grace"}
    assert deliver(client, bot, update).status_code == 200
    assert not rows(bot).exists()


def test_a_text_mention_of_the_bot_counts(client, bot):
    text = "Switchboard, what time is it?"
    update = telegram_update(
        text,
        chat_id=-100777,
        chat_type="group",
        entities=[
            entity(text, "Switchboard", "text_mention", user={"id": 7000000002, "is_bot": True, "first_name": "S"})
        ],
    )
    assert deliver(client, bot, update).status_code == 200
    assert rows(bot).get().text == ", what time is it?"


@pytest.mark.parametrize("chat_type", ["group", "supergroup"])
def test_a_group_message_without_mention_is_acknowledged_but_not_recorded(client, bot, chat_type):
    assert bot.require_mention_in_groups
    update = fixture("group_text")
    update["message"]["chat"]["type"] = chat_type
    response = deliver(client, bot, update)
    assert response.status_code == 200
    assert not rows(bot).exists()


def test_a_mention_of_someone_else_is_not_for_the_bot(client, bot):
    text = "@grace_h lunch?"
    update = telegram_update(text, chat_id=-100777, chat_type="supergroup", entities=[entity(text, "@grace_h")])
    assert deliver(client, bot, update).status_code == 200
    assert not rows(bot).exists()


def test_without_bot_username_a_mention_cannot_be_recognised(client, make_telegram_bot):
    bot = make_telegram_bot(extra={})
    assert deliver(client, bot, fixture("group_mention")).status_code == 200
    assert not rows(bot).exists()


def test_a_group_message_is_answered_when_mentions_are_not_required(client, make_telegram_bot):
    bot = make_telegram_bot(require_mention_in_groups=False)
    assert deliver(client, bot, fixture("group_text")).status_code == 200
    row = rows(bot).get()
    assert (row.mentioned, row.text, row.sender_id) == (False, "Lunch at noon, anyone?", "6234567890")


def test_an_anonymous_admin_speaks_as_the_group(client, bot):
    text = f"@{USERNAME} status?"
    update = telegram_update(
        text, chat_id=-1001234567890, chat_type="supergroup", entities=[entity(text, f"@{USERNAME}")]
    )
    update["message"]["from"] = {
        "id": 1087968824,
        "is_bot": True,
        "first_name": "Group",
        "username": "GroupAnonymousBot",
    }
    update["message"]["sender_chat"] = {"id": -1001234567890, "title": "Switchboard team", "type": "supergroup"}
    assert deliver(client, bot, update).status_code == 200
    row = rows(bot).get()
    assert (row.sender_id, row.text) == ("-1001234567890", "status?")


def _changed(name: str, change):
    def build() -> dict:
        update = fixture(name)
        change(update)
        return update

    return build


IGNORED = {
    "edited message": lambda: fixture("edited_message"),
    "photo": lambda: fixture("private_photo"),
    "channel post": lambda: {"update_id": 871234510, "channel_post": fixture("private_text")["message"]},
    "callback query": lambda: {"update_id": 871234511, "callback_query": {"id": "4382bfdwdsb323b2d9", "data": "x"}},
    "from another bot": _changed("private_text", lambda u: u["message"]["from"].update(is_bot=True)),
    "channel chat": _changed("private_text", lambda u: u["message"]["chat"].update(type="channel")),
    "bare mention": lambda: telegram_update(
        f"@{USERNAME}", chat_id=-100777, chat_type="group", entities=[entity(f"@{USERNAME}", f"@{USERNAME}")]
    ),
    "odd entities": _changed(
        "group_mention",
        lambda u: u["message"].update(
            entities=[
                {"offset": "3", "length": 21, "type": "mention"},
                7,
                {"offset": 50, "length": 99, "type": "mention"},
                {"offset": 3, "length": 0, "type": "mention"},
                {"offset": -1, "length": 4, "type": "mention"},
            ]
        ),
    ),
    "chat id not a number": _changed("private_text", lambda u: u["message"]["chat"].update(id="5123456789")),
    "message not an object": lambda: {"update_id": 871234512, "message": "hello"},
}


@pytest.mark.parametrize("case", IGNORED)
def test_updates_without_a_question_are_acknowledged_with_200_and_not_recorded(client, bot, case):
    # Telegram repeats an update until it gets a 2xx: anything we ignore must still get one.
    response = deliver(client, bot, IGNORED[case]())
    assert response.status_code == 200
    assert not rows(bot).exists()


def test_a_redelivered_update_is_recorded_once(client, bot):
    update = fixture("private_text")
    first, again = deliver(client, bot, update), deliver(client, bot, update)
    assert (first.status_code, again.status_code) == (200, 200)
    assert rows(bot).count() == 1


def test_a_replayed_request_is_acknowledged_and_not_recorded_again(client, bot):
    # Telegram's requests carry no nonce or timestamp, and a redelivery is byte-for-byte
    # the same as a replay. Answering 409 would make Telegram repeat it (it retries every
    # non-2xx); the unique message key already keeps it from being answered twice.
    headers, body = telegram_callback(fixture("private_text"), SECRET)
    assert post(client, bot, headers, body).status_code == 200
    assert post(client, bot, headers, body).status_code == 200
    assert rows(bot).count() == 1


def test_the_same_message_in_a_new_update_is_recorded_once(client, bot):
    update = fixture("private_text")
    assert deliver(client, bot, update).status_code == 200
    update = copy.deepcopy(update)
    update["update_id"] += 1000
    assert deliver(client, bot, update).status_code == 200
    assert rows(bot).count() == 1


# -- the bad corpus: 4xx, never 500, nothing recorded, and refused for the right reason

BAD_CORPUS = {
    "forged secret": (
        lambda: telegram_callback(fixture("private_text"), "a-guessed-secret"),
        401,
        "X-Telegram-Bot-Api-Secret-Token does not match",
    ),
    "secret of another case": (
        lambda: telegram_callback(fixture("private_text"), SECRET.upper()),
        401,
        "does not match",
    ),
    "secret missing": (lambda: telegram_callback(fixture("private_text"), None), 401, "does not match"),
    "non-ascii secret": (lambda: telegram_callback(fixture("private_text"), "сек"), 401, "does not match"),
    "malformed json": (
        lambda: ({"X-Telegram-Bot-Api-Secret-Token": SECRET}, b'{"update_id": 1, "message": {'),
        400,
        "the body is not JSON",
    ),
    "json but not an object": (
        lambda: ({"X-Telegram-Bot-Api-Secret-Token": SECRET}, b"[871234501]"),
        400,
        "not an object",
    ),
    "no update_id": (
        lambda: telegram_callback({"message": fixture("private_text")["message"]}, SECRET),
        400,
        "no update_id",
    ),
}


@pytest.mark.parametrize("case", BAD_CORPUS)
def test_bad_corpus_is_refused_for_the_right_reason(client, bot, caplog, case):
    build, status, reason = BAD_CORPUS[case]
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, bot, *build())
    assert response.status_code == status
    assert reason in caplog.text
    assert SECRET not in caplog.text
    assert not rows(bot).exists()


def test_a_bot_without_a_webhook_secret_refuses_everything(client, make_telegram_bot, caplog):
    bot = make_telegram_bot(app_secret="")
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        assert deliver(client, bot, fixture("private_text"), secret="").status_code == 401
        assert deliver(client, bot, fixture("private_text"), secret=None).status_code == 401
    assert "run manage.py telegram_set_webhook" in caplog.text
    assert not rows(bot).exists()


def test_an_oversized_body_is_refused_with_413(client, bot):
    update = fixture("private_text")
    update["message"]["text"] = "x" * settings.CALLBACK_MAX_BODY_BYTES
    assert deliver(client, bot, update).status_code == 413
    assert not rows(bot).exists()


def test_an_unknown_bot_is_404(client, db):
    unknown = Bot(platform="telegram")  # unsaved: its uuid is in no row
    assert deliver(client, unknown, fixture("private_text")).status_code == 404
    assert not InboundMessage.objects.exists()


def test_a_platform_mismatch_is_404(client, bot, make_bot):
    headers, body = telegram_callback(fixture("private_text"), SECRET)
    assert post(client, bot, headers, body, path=f"/callback/dingtalk/{bot.uuid}/").status_code == 404
    other = make_bot(platform="dingtalk", app_secret=SECRET)
    assert post(client, bot, headers, body, path=f"/callback/telegram/{other.uuid}/").status_code == 404
    assert not InboundMessage.objects.exists()


# -- messages out ---------------------------------------------------------------------


@pytest.fixture
def telegram():
    with FakeTelegram() as fake:
        fake.add_bot(TOKEN, USERNAME)
        yield fake


@pytest.fixture
def sending_bot(make_telegram_bot, telegram) -> Bot:
    return make_telegram_bot(api_base_url=telegram.url)


@pytest.fixture
def http():
    with httpx.Client(timeout=2.0) as client:
        yield client


def reply(text: str = "Canberra.", chat_id: int = 5123456789, message_id: int | None = 1365) -> OutboundReply:
    context = {"chat_id": chat_id, **({"message_id": message_id} if message_id else {})}
    return OutboundReply(
        chat_id=str(chat_id),
        chat_type="p2p",
        sender_id=str(chat_id),
        text=text,
        reply_context=context,
        idempotency_key="sb-1-0",
    )


def test_the_default_api_base_is_telegrams(make_telegram_bot):
    assert TelegramAdapter(make_telegram_bot()).api_base == "https://api.telegram.org"


def test_a_reply_quotes_the_question(telegram, sending_bot, http):
    TelegramAdapter(sending_bot).send(reply("Canberra — Канберра."), http)
    [request] = telegram.received(r"/sendMessage$")
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "chat_id": 5123456789,
        "text": "Canberra — Канберра.",
        "reply_parameters": {"message_id": 1365, "allow_sending_without_reply": True},
    }
    assert [(m["chat_id"], m["reply_to"], m["text"]) for m in telegram.sent] == [
        (5123456789, 1365, "Canberra — Канберра.")
    ]


def test_without_a_message_to_quote_it_just_sends(telegram, sending_bot, http):
    TelegramAdapter(sending_bot).send(reply(chat_id=-1001234567890, message_id=None), http)
    assert telegram.received(r"/sendMessage$")[0].json() == {"chat_id": -1001234567890, "text": "Canberra."}


def test_429_is_transient_with_telegrams_retry_after(telegram, sending_bot, http):
    telegram.rate_limit(retry_after=17)
    with pytest.raises(TransportError) as error:
        TelegramAdapter(sending_bot).send(reply(), http)
    assert (error.value.permanent, error.value.retry_after) == (False, 17.0)
    assert telegram.sent == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}),
        Fault(502, "<html><body>502 Bad Gateway</body></html>"),
    ],
    ids=["bot api error", "proxy page"],
)
def test_server_errors_are_transient(telegram, sending_bot, http, fault):
    telegram.plan(r"/sendMessage$", fault)
    with pytest.raises(TransportError) as error:
        TelegramAdapter(sending_bot).send(reply(), http)
    assert (error.value.permanent, error.value.retry_after) == (False, None)


def test_a_user_who_blocked_the_bot_is_permanent(telegram, sending_bot, http):
    telegram.blocked_chats.add(5123456789)
    with pytest.raises(TransportError, match="403 Forbidden: bot was blocked by the user") as error:
        TelegramAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_a_chat_that_is_gone_is_permanent(telegram, sending_bot, http):
    telegram.unknown_chats.add(-100999)
    with pytest.raises(TransportError, match="400 Bad Request: chat not found") as error:
        TelegramAdapter(sending_bot).send(reply(chat_id=-100999), http)
    assert error.value.permanent is True


def test_a_group_upgraded_to_a_supergroup_gets_the_reply_at_its_new_id(telegram, sending_bot, http):
    telegram.migrated_chats[-4001] = -1004001
    TelegramAdapter(sending_bot).send(reply(chat_id=-4001, message_id=77), http)
    assert [r.json()["chat_id"] for r in telegram.received(r"/sendMessage$")] == [-4001, -1004001]
    assert [(m["chat_id"], m["reply_to"]) for m in telegram.sent] == [(-1004001, None)]


def test_an_unknown_token_is_permanent_and_not_repeated_in_the_error(telegram, make_telegram_bot, http):
    other = "7000000003:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsXX"
    bot = make_telegram_bot(api_base_url=telegram.url, token=other)
    with pytest.raises(TransportError, match="401 Unauthorized") as error:
        TelegramAdapter(bot).send(reply(), http)
    assert error.value.permanent is True
    assert "BotFather" in str(error.value) and other not in str(error.value)


@pytest.mark.parametrize("token", ["", "not-a-token", f"{TOKEN}/../getMe?x=", "123:short"])
def test_a_malformed_token_is_permanent_and_never_sent(telegram, make_telegram_bot, http, token):
    bot = make_telegram_bot(api_base_url=telegram.url, token=token)
    with pytest.raises(TransportError, match="not a Telegram bot token") as error:
        TelegramAdapter(bot).send(reply(), http)
    assert error.value.permanent is True
    assert telegram.requests == []


def test_something_that_is_not_the_bot_api_is_permanent(telegram, sending_bot, http):
    telegram.plan(r"/sendMessage$", Fault(404, "<html>Not Found</html>"))
    with pytest.raises(TransportError, match="API base URL") as error:
        TelegramAdapter(sending_bot).send(reply(), http)
    assert error.value.permanent is True


def test_a_timeout_is_transient(telegram, sending_bot):
    telegram.plan(r"/sendMessage$", Fault(delay=0.6, passthrough=True))
    with httpx.Client(timeout=0.2) as impatient, pytest.raises(TransportError) as error:
        TelegramAdapter(sending_bot).send(reply(), impatient)
    assert error.value.permanent is False
    assert TOKEN not in str(error.value)


def test_an_unreachable_api_is_transient(make_telegram_bot, http):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bot = make_telegram_bot(api_base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError) as error:
        TelegramAdapter(bot).send(reply(), http)
    assert error.value.permanent is False
    assert TOKEN not in str(error.value)


def test_a_reply_of_the_longest_length_is_accepted(telegram, sending_bot, http):
    # Telegram counts code points: 4096 astral characters (8192 UTF-16 units) still fit.
    text = "😀" * TelegramAdapter.max_reply_length
    TelegramAdapter(sending_bot).send(reply(text), http)
    assert telegram.sent[0]["text"] == text


def test_the_bot_token_stays_out_of_httpxs_request_log(telegram, sending_bot, http, caplog):
    with caplog.at_level(logging.INFO, logger="httpx"):
        TelegramAdapter(sending_bot).send(reply(), http)
    assert "/bot***/sendMessage" in caplog.text
    assert TOKEN.split(":")[1] not in caplog.text
