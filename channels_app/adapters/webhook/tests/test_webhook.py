"""The generic webhook: its signature (against openssl and the README's own examples),
messages through the real view into PostgreSQL and Redis, and replies against a fake
receiver that verifies our signature the way the README tells integrators to."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from bots.models import Bot
from channels_app.adapters.webhook import adapter as webhook_adapter
from channels_app.adapters.webhook.adapter import WebhookAdapter, sign
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.registry import adapter_for
from tests.fakes.server import Fault
from tests.fakes.webhook import (
    REPLY_PATH,
    FakeWebhookReceiver,
    switchboard_signature,
    webhook_callback,
    webhook_message,
)

FOLDER = Path(__file__).resolve().parent.parent
SECRET = "fixture-shared-secret-7c1e"


def fixture(name: str) -> dict:
    return json.loads((FOLDER / "fixtures" / f"{name}.json").read_text())


def readme_block(language: str) -> str:
    [block] = re.findall(rf"```{language}\n(.*?)```", (FOLDER / "README.md").read_text(), flags=re.S)
    return block


@pytest.fixture
def make_webhook_bot(make_bot):
    def make(**fields) -> Bot:
        return make_bot(
            **{
                "platform": "webhook",
                "app_secret": SECRET,
                "extra": {"outbound_url": "http://127.0.0.1:9/replies"},
                **fields,
            }
        )

    return make


@pytest.fixture
def bot(make_webhook_bot) -> Bot:
    return make_webhook_bot()


def post(client, bot: Bot, headers: dict[str, str], body: bytes, platform: str | None = None):
    headers = dict(headers)
    content_type = headers.pop("Content-Type", "application/json")
    path = f"/callback/{platform}/{bot.uuid}/" if platform else bot.callback_path
    return client.post(path, data=body, content_type=content_type, headers=headers)


def deliver(client, bot: Bot, message: dict | bytes, **signing):
    return post(client, bot, *webhook_callback(message, SECRET, **signing))


def rows(bot: Bot):
    return InboundMessage.objects.filter(bot=bot)


def test_the_adapter_is_registered():
    assert adapter_for("webhook") is WebhookAdapter


# -- the signature ------------------------------------------------------------------------


def test_signature_matches_openssl():
    # printf '%s.%s' 1700000000 '{"id":"m-1","text":"naïve ✓"}' | openssl dgst -sha256 -hmac 'sécret-42'
    expected = "v1=3d2adfd506af69a7b699f6b89eb517a4442a8dc8aa67b5e2847fd9d15cf25531"
    assert sign("sécret-42", "1700000000", '{"id":"m-1","text":"naïve ✓"}'.encode()) == expected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the README's shell example needs openssl")
def test_the_readmes_shell_example_computes_our_signature():
    [line] = [line for line in readme_block("sh").splitlines() if line.startswith("SIG=")]
    body = json.dumps(fixture("message_p2p"), ensure_ascii=False)
    env = {"PATH": os.environ["PATH"], "SECRET": "sécret-42", "TS": "1732545119", "BODY": body}
    shown = subprocess.run(
        ["bash", "-c", f'{line}\nprintf %s "$SIG"'], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert shown == sign("sécret-42", "1732545119", body.encode())


def test_the_readmes_python_example_signs_like_us_and_verifies_our_replies(bot):
    example: dict = {}
    exec(readme_block("python"), example)  # noqa: S102 - our own README, to keep it right
    body = b'{"id":"m-1","text":"x"}'
    assert example["sign"](SECRET, "1700000000", body) == sign(SECRET, "1700000000", body)
    now = str(int(time.time()))
    assert example["verify"](SECRET, now, sign(SECRET, now, body), body) is True
    assert example["verify"](SECRET, now, sign(SECRET, now, body), body + b" ") is False
    stale = str(int(time.time()) - 400)
    assert example["verify"](SECRET, stale, sign(SECRET, stale, body), body) is False


def test_the_fakes_independent_signature_agrees_with_ours():
    body = json.dumps({"text": "naïve ✓"}, ensure_ascii=False).encode()
    assert switchboard_signature("sécret", "1700000000", body) == sign("sécret", "1700000000", body)


# -- messages in --------------------------------------------------------------------------


def test_a_message_is_recorded_and_accepted_with_202(client, bot):
    response = deliver(client, bot, fixture("message_p2p"))
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "id": "ticket-4711-comment-2"}
    row = rows(bot).get()
    assert row.status == MessageStatus.RECEIVED
    assert row.platform_message_id == "ticket-4711-comment-2"
    assert (row.chat_id, row.chat_type, row.sender_id) == ("ticket-4711", "p2p", "customer-1093")
    assert row.text == "My order #4711 arrived damaged. What are my options?"
    assert row.mentioned is True
    assert row.raw["reply_context"] == {
        "message_id": "ticket-4711-comment-2",
        "metadata": {"ticket_url": "https://helpdesk.example.com/tickets/4711", "priority": "high"},
    }


def test_a_group_message_that_does_not_address_the_bot_is_accepted_but_not_recorded(client, bot):
    assert bot.require_mention_in_groups
    response = deliver(client, bot, fixture("message_group"))
    assert response.status_code == 202
    assert not rows(bot).exists()


def test_a_group_message_that_addresses_the_bot_is_recorded(client, bot):
    assert deliver(client, bot, fixture("message_group_mention")).status_code == 202
    row = rows(bot).get()
    assert (row.chat_type, row.mentioned, row.raw["reply_context"]["metadata"]) == ("group", True, {})


def test_a_group_message_is_recorded_when_the_bot_does_not_require_mentions(client, make_webhook_bot):
    bot = make_webhook_bot(require_mention_in_groups=False)
    message = fixture("message_group")
    del message["mentioned"]  # defaults to false in a group
    assert deliver(client, bot, message).status_code == 202
    assert rows(bot).get().mentioned is False


def test_the_same_id_signed_anew_is_recorded_once(client, bot):
    sent_at = int(time.time())
    assert deliver(client, bot, fixture("message_p2p"), timestamp=sent_at).status_code == 202
    again = deliver(client, bot, fixture("message_p2p"), timestamp=sent_at + 5)  # the sender's retry
    assert again.status_code == 202
    assert again.json()["id"] == "ticket-4711-comment-2"
    assert rows(bot).count() == 1


def test_the_same_signed_request_twice_is_a_redelivery(client, bot):
    # The signature covers the body: the same one again can only carry the same message.
    headers, body = webhook_callback(fixture("message_p2p"), SECRET)
    first, again = post(client, bot, headers, body), post(client, bot, headers, body)
    assert (first.status_code, again.status_code, again.json()) == (202, 202, first.json())
    assert rows(bot).count() == 1


def test_unknown_fields_are_ignored(client, bot):
    message = {**fixture("message_p2p"), "priority": 3, "attachments": []}
    assert deliver(client, bot, message).status_code == 202
    assert rows(bot).get().text == fixture("message_p2p")["text"]


def test_ids_of_exactly_200_characters_are_kept_whole(client, bot):
    message = webhook_message("i" * 200, "c" * 200, "u" * 200, "hi")
    assert deliver(client, bot, message).status_code == 202
    row = rows(bot).get()
    assert (len(row.platform_message_id), len(row.chat_id), len(row.sender_id)) == (200, 200, 200)


# -- the bad corpus: 4xx, never 500, nothing recorded, and refused for the right reason ----


def _signed(message: dict | bytes | None = None, **signing) -> tuple[dict, bytes]:
    return webhook_callback(fixture("message_p2p") if message is None else message, SECRET, **signing)


def _forged():
    headers, body = _signed()
    return {**headers, "X-Switchboard-Signature": "v1=" + "0" * 64}, body


def _body_changed_after_signing():
    headers, body = _signed()
    return headers, body.replace(b"damaged", b"perfect")


def _without(header: str):
    headers, body = _signed()
    del headers[header]
    return headers, body


def _changed(**fields):
    message = fixture("message_p2p")
    for name, value in fields.items():
        if value is None:
            del message[name]
        else:
            message[name] = value
    return _signed(message)


BAD_CORPUS = {
    "forged signature": (_forged, 401, "X-Switchboard-Signature does not match"),
    "another secret": (lambda: webhook_callback(fixture("message_p2p"), "not the secret"), 401, "does not match"),
    "body changed after signing": (_body_changed_after_signing, 401, "does not match"),
    "signature without v1=": (
        lambda: (
            {**_signed()[0], "X-Switchboard-Signature": _signed()[0]["X-Switchboard-Signature"].removeprefix("v1=")},
            _signed()[1],
        ),
        401,
        "does not match",
    ),
    "signature missing": (lambda: _without("X-Switchboard-Signature"), 401, "is missing"),
    "timestamp missing": (lambda: _without("X-Switchboard-Timestamp"), 401, "is missing"),
    "stale timestamp": (lambda: _signed(timestamp=int(time.time()) - 306), 401, "refused (stale_timestamp)"),
    "timestamp from the future": (lambda: _signed(timestamp=int(time.time()) + 3600), 401, "refused (stale_timestamp)"),
    "timestamp in milliseconds": (
        lambda: _signed(timestamp=int(time.time() * 1000)),
        400,
        "not a number of seconds (it looks like milliseconds)",
    ),
    "timestamp not a number": (lambda: _signed(timestamp="2024-11-25T14:00:00Z"), 400, "not a number of seconds"),
    "malformed json": (lambda: _signed(b'{"id": "m-1", '), 400, "the body is not JSON"),
    "json but not an object": (lambda: _signed(b'[{"id": "m-1"}]'), 400, "not an object"),
    "not utf-8": (lambda: _signed(b'{"id": "\xff"}'), 400, "the body is not JSON"),
    "no id": (lambda: _changed(id=None), 400, '"id" must be a non-empty string'),
    "numeric id": (lambda: _changed(id=4711), 400, "send numbers as strings"),
    "blank id": (lambda: _changed(id="  "), 400, '"id" must be a non-empty string'),
    "id too long": (lambda: _changed(id="x" * 201), 400, "at most 200"),
    "no conversation": (lambda: _changed(conversation=None), 400, '"conversation" must be'),
    "no user": (lambda: _changed(user=None), 400, '"user" must be'),
    "user too long": (lambda: _changed(user="u" * 201), 400, "at most 200"),
    "no text": (lambda: _changed(text=None), 400, '"text" must be a non-empty string'),
    "blank text": (lambda: _changed(text=" \n"), 400, '"text" must be a non-empty string'),
    "text not a string": (lambda: _changed(text=["hi"]), 400, '"text" must be'),
    "unknown chat_type": (lambda: _changed(chat_type="channel"), 400, '"chat_type" must be'),
    "mentioned not a bool": (lambda: _changed(mentioned="yes"), 400, '"mentioned" must be'),
    "metadata not an object": (lambda: _changed(metadata=["a"]), 400, '"metadata" must be'),
    "our own reply sent back": (lambda: _signed(fixture("reply")), 400, "this is a Switchboard reply"),
}


@pytest.mark.parametrize("case", BAD_CORPUS)
def test_bad_corpus_is_refused_for_the_right_reason(client, bot, caplog, case):
    build, status, reason = BAD_CORPUS[case]
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        response = post(client, bot, *build())
    assert response.status_code == status
    assert reason in caplog.text
    assert not rows(bot).exists()


def test_a_bot_without_a_secret_refuses_everything(client, make_webhook_bot, caplog):
    bot = make_webhook_bot(app_secret="")
    with caplog.at_level(logging.WARNING, logger="switchboard.callbacks"):
        # Signed with the empty secret: an unset secret must not become a known one.
        response = post(client, bot, *webhook_callback(fixture("message_p2p"), ""))
    assert response.status_code == 401
    assert "this bot has no shared secret" in caplog.text
    assert not rows(bot).exists()


def test_an_oversized_body_is_refused_with_413(client, bot):
    message = {**fixture("message_p2p"), "text": "x" * settings.CALLBACK_MAX_BODY_BYTES}
    assert deliver(client, bot, message).status_code == 413
    assert not rows(bot).exists()


def test_an_unknown_bot_is_404(client, db):
    unknown = Bot(platform="webhook")  # unsaved: its uuid is in no row
    assert deliver(client, unknown, fixture("message_p2p")).status_code == 404
    assert not InboundMessage.objects.exists()


def test_a_bot_of_another_platform_is_404(client, make_bot):
    slack_bot = make_bot(platform="slack", app_secret=SECRET)
    assert post(client, slack_bot, *_signed(), platform="webhook").status_code == 404
    assert not InboundMessage.objects.exists()


def test_a_get_is_refused_without_a_trace(client, bot):
    response = client.get(bot.callback_path)
    assert response.status_code == 401
    assert not rows(bot).exists()


# -- replies out --------------------------------------------------------------------------


@pytest.fixture
def receiver():
    with FakeWebhookReceiver(secret=SECRET) as fake:
        yield fake


@pytest.fixture
def sending_bot(make_webhook_bot, receiver) -> Bot:
    return make_webhook_bot(extra={"outbound_url": receiver.outbound_url})


@pytest.fixture
def http():
    with httpx.Client(timeout=2.0) as client:
        yield client


def reply(
    text: str = "A replacement is on its way.",
    key: str = "sb-0123456789ab-7-0",
    part: int = 1,
    parts: int = 1,
    metadata: dict | None = None,
) -> OutboundReply:
    return OutboundReply(
        chat_id="ticket-4711",
        chat_type="p2p",
        sender_id="customer-1093",
        text=text,
        reply_context={"message_id": "ticket-4711-comment-2", "metadata": metadata or {}},
        idempotency_key=key,
        part=part,
        parts=parts,
    )


def send(bot: Bot, outbound: OutboundReply, http: httpx.Client) -> None:
    WebhookAdapter(bot).send(outbound, http)


def test_a_reply_is_posted_signed_with_the_documented_fields(receiver, sending_bot, http):
    send(
        sending_bot,
        reply(
            "Ein Ersatz ist unterwegs — 替换件已寄出 ✓",
            part=2,
            parts=3,
            metadata={"ticket_url": "https://helpdesk.example.com/tickets/4711"},
        ),
        http,
    )
    [request] = receiver.received(re.escape(REPLY_PATH))
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers["idempotency-key"] == "sb-0123456789ab-7-0"
    assert request.headers["user-agent"] == "Switchboard-Webhook/1"
    assert abs(int(request.headers["x-switchboard-timestamp"]) - time.time()) < 5
    assert request.headers["x-switchboard-signature"] == switchboard_signature(
        SECRET, request.headers["x-switchboard-timestamp"], request.body
    )
    assert request.json() == {
        "id": "sb-0123456789ab-7-0",
        "in_reply_to": "ticket-4711-comment-2",
        "conversation": "ticket-4711",
        "user": "customer-1093",
        "text": "Ein Ersatz ist unterwegs — 替换件已寄出 ✓",
        "part": 2,
        "parts": 3,
        "metadata": {"ticket_url": "https://helpdesk.example.com/tickets/4711"},
    }
    assert [r["text"] for r in receiver.delivered] == ["Ein Ersatz ist unterwegs — 替换件已寄出 ✓"]


def test_the_documented_reply_fixture_has_the_shape_we_send(receiver, sending_bot, http):
    send(sending_bot, reply(), http)
    assert set(receiver.received()[0].json()) == set(fixture("reply"))


def test_a_retried_part_reaches_the_receiver_with_the_same_id(receiver, sending_bot, http):
    send(sending_bot, reply(key="sb-x-1-0"), http)
    send(sending_bot, reply(key="sb-x-1-0"), http)  # a retried task
    send(sending_bot, reply("second part", key="sb-x-1-1", part=2, parts=2), http)
    assert len(receiver.received()) == 3
    assert [(r["id"], r["part"]) for r in receiver.delivered] == [("sb-x-1-0", 1), ("sb-x-1-1", 2)]


def test_a_receiver_with_another_secret_refuses_and_that_is_permanent(receiver, sending_bot, http):
    receiver.secret = "the receiver's outdated secret"
    with pytest.raises(TransportError, match="answered HTTP 401") as error:
        send(sending_bot, reply(), http)
    assert error.value.permanent is True
    assert receiver.delivered == []
    assert SECRET not in str(error.value)


def test_the_longest_reply_goes_in_one_request(receiver, sending_bot, http):
    text = "😀" * WebhookAdapter.max_reply_length
    send(sending_bot, reply(text), http)
    assert receiver.delivered[0]["text"] == text


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        (Fault(500, {"error": "boom"}), None),
        (Fault(502, "<html>Bad Gateway</html>"), None),
        (Fault(503, {}, headers={"Retry-After": "30"}), 30.0),
        (Fault(408, {}), None),
        (Fault(429, {}, headers={"Retry-After": "2"}), 2.0),
    ],
    ids=["500", "502", "503-retry-after", "408", "429"],
)
def test_server_trouble_and_rate_limits_are_transient(receiver, sending_bot, http, fault, retry_after):
    receiver.plan(re.escape(REPLY_PATH), fault)
    with pytest.raises(TransportError) as error:
        send(sending_bot, reply(), http)
    assert (error.value.permanent, error.value.retry_after) == (False, retry_after)
    assert receiver.delivered == []


def test_retry_after_as_an_http_date_is_honoured(receiver, sending_bot, http):
    receiver.plan(
        re.escape(REPLY_PATH), Fault(429, {}, headers={"Retry-After": formatdate(time.time() + 60, usegmt=True)})
    )
    with pytest.raises(TransportError) as error:
        send(sending_bot, reply(), http)
    assert error.value.permanent is False
    assert 50 <= error.value.retry_after <= 61


def test_a_slow_receiver_is_transient(receiver, sending_bot, http, monkeypatch):
    # The adapter sets its own timeout on each request, whatever the worker's client has.
    monkeypatch.setattr(webhook_adapter, "OUTBOUND_TIMEOUT", httpx.Timeout(0.2))
    receiver.plan(re.escape(REPLY_PATH), Fault(delay=0.6, passthrough=True))
    with pytest.raises(TransportError, match="did not answer in time") as error:
        send(sending_bot, reply(), http)
    assert error.value.permanent is False


def test_the_receiver_gets_ten_seconds():
    assert (webhook_adapter.OUTBOUND_TIMEOUT.read, webhook_adapter.OUTBOUND_TIMEOUT.connect) == (10.0, 5.0)


def test_an_unreachable_receiver_is_transient(make_webhook_bot, http):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bot = make_webhook_bot(extra={"outbound_url": f"http://127.0.0.1:{port}/replies"})
    with pytest.raises(TransportError) as error:
        send(bot, reply(), http)
    assert error.value.permanent is False


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_client_errors_are_permanent(receiver, sending_bot, http, status):
    receiver.plan(re.escape(REPLY_PATH), Fault(status, {"error": "no such conversation"}))
    with pytest.raises(TransportError, match=f"HTTP {status}.*no such conversation") as error:
        send(sending_bot, reply(), http)
    assert error.value.permanent is True


def test_a_redirect_is_not_followed_and_is_permanent(receiver, sending_bot):
    receiver.plan(re.escape(REPLY_PATH), Fault(307, "", headers={"Location": receiver.url + "/elsewhere"}))
    # Even by a client that would follow it: the signed reply goes to the configured URL only.
    with (
        httpx.Client(timeout=2.0, follow_redirects=True) as following,
        pytest.raises(TransportError, match="redirects are not followed") as error,
    ):
        send(sending_bot, reply(), following)
    assert error.value.permanent is True
    assert [r.path for r in receiver.received()] == [REPLY_PATH]


@pytest.mark.parametrize(
    ("outbound_url", "reason"),
    [
        (None, "has no outbound_url"),
        ("", "has no outbound_url"),
        (42, "has no outbound_url"),
        ("ftp://files.example.com/replies", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("https://", "must be an http:// or https:// URL"),
        ("example.com/replies", "must be an http:// or https:// URL"),
        ("https://user:pass@example.com/replies", "must not carry credentials"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/replies", "link-local"),
    ],
)
def test_an_unusable_outbound_url_is_permanent_and_never_called(make_webhook_bot, http, outbound_url, reason):
    extra = {} if outbound_url is None else {"outbound_url": outbound_url}
    with pytest.raises(TransportError, match=reason) as error:
        send(make_webhook_bot(extra=extra), reply(), http)
    assert error.value.permanent is True


def test_a_bot_without_a_secret_sends_nothing(receiver, make_webhook_bot, http):
    bot = make_webhook_bot(app_secret="", extra={"outbound_url": receiver.outbound_url})
    with pytest.raises(TransportError, match="no shared secret") as error:
        send(bot, reply(), http)
    assert error.value.permanent is True
    assert receiver.received() == []


def test_a_recorded_message_carries_what_send_needs(client, bot, receiver, http):
    assert deliver(client, bot, fixture("message_p2p")).status_code == 202
    row = rows(bot).get()
    bot.extra = {"outbound_url": receiver.outbound_url}
    send(
        bot,
        OutboundReply(
            chat_id=row.chat_id,
            chat_type=row.chat_type,
            sender_id=row.sender_id,
            text="ok",
            reply_context=row.raw["reply_context"],
            idempotency_key="sb-k-1-0",
        ),
        http,
    )
    delivered = receiver.delivered[0]
    assert (delivered["in_reply_to"], delivered["conversation"], delivered["user"]) == (
        "ticket-4711-comment-2",
        "ticket-4711",
        "customer-1093",
    )
    assert delivered["metadata"] == fixture("message_p2p")["metadata"]
    assert (delivered["part"], delivered["parts"]) == (1, 1)


def test_the_receiver_fake_refuses_an_unsigned_reply(receiver):
    # The fake must be strict, or the tests above would prove nothing about our signature.
    response = httpx.post(
        receiver.outbound_url,
        content=json.dumps(fixture("reply")).encode(),
        headers={"Idempotency-Key": fixture("reply")["id"]},
    )
    assert response.status_code == 401
    assert receiver.delivered == []
