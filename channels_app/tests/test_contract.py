"""The shared contract: every registered adapter rejects a forged request, answers its
platform's handshake, records a text message once (re-deliveries included) and sends a
reply through the platform's API; its sends are retried after a 5xx, a timeout or a lost
answer, not after a 4xx, refresh a dead access token once, and carry the longest reply
in parts the platform takes. Each adapter brings a kit in
channels_app/adapters/<platform>/tests/contract.py; a platform without one fails here."""

from __future__ import annotations

import email.utils
import importlib
import time

import httpx
import pytest

from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage
from channels_app.outbound import measure, split_reply
from channels_app.registry import registered
from channels_app.tests.contract import ContractKit
from tests.fakes.server import Fault

#: Registered platforms whose kit is not finished yet: reported as strict xfails, so
#: they stay visible and the list must shrink when a kit lands.
KITS_PENDING: frozenset[str] = frozenset()

PLATFORMS = sorted(registered())
MSG_ID = "7385000000000000042"
TEXT = "契约测试 contract ✓"
REPLY = "回答 — the answer."


def kit_for(platform: str) -> ContractKit:
    try:
        module = importlib.import_module(f"channels_app.adapters.{platform}.tests.contract")
    except ModuleNotFoundError as exc:
        if exc.name != f"channels_app.adapters.{platform}.tests.contract":
            raise
        pytest.fail(f"{platform} has no contract kit: add channels_app/adapters/{platform}/tests/contract.py with KIT")
    kit = getattr(module, "KIT", None)
    assert isinstance(kit, ContractKit), f"{module.__name__}.KIT is not a ContractKit"
    assert kit.platform == platform
    return kit


def params():
    for platform in PLATFORMS:
        marks = [pytest.mark.xfail(strict=True, reason="contract kit pending")] if platform in KITS_PENDING else []
        yield pytest.param(platform, marks=marks, id=platform)


@pytest.fixture(params=list(params()))
def platform(request) -> str:
    return request.param


@pytest.fixture
def kit(platform) -> ContractKit:
    return kit_for(platform)


@pytest.fixture
def running(kit, db):
    with kit.running() as fake:
        yield fake


@pytest.fixture
def bot(kit, running):
    return kit.make_bot(running.url)


def test_there_are_platforms_to_check():
    assert len(PLATFORMS) >= 7
    assert KITS_PENDING <= set(PLATFORMS)


def test_a_forged_request_is_refused(client, kit, bot):
    response = kit.forge(kit.text_message(bot, MSG_ID, TEXT)).send(client)
    assert 400 <= response.status_code < 500, response.content[:300]
    assert not InboundMessage.objects.exists()


def test_the_handshake_answers_as_the_platform_expects(client, kit, bot):
    handshake = kit.handshake(bot)
    if handshake is None:
        pytest.skip(f"{kit.platform} has no URL verification")
    response = handshake.request.send(client)
    assert response.status_code == handshake.expected_status, response.content[:300]
    handshake.check(response)
    assert not InboundMessage.objects.exists()


def test_a_text_message_is_recorded_once_and_answered_through_the_api(client, kit, bot, running):
    response = kit.text_message(bot, MSG_ID, TEXT).send(client)
    assert 200 <= response.status_code < 300, response.content[:300]
    [row] = InboundMessage.objects.filter(bot=bot)
    assert (row.text, row.platform_message_id) == (TEXT, kit.platform_message_id(MSG_ID))
    assert row.chat_type == "p2p"

    again = kit.text_message(bot, MSG_ID, TEXT, delivery=2).send(client)
    assert 200 <= again.status_code < 300, again.content[:300]
    assert InboundMessage.objects.filter(bot=bot).count() == 1

    assert kit.sent_texts(running) == []
    reply = OutboundReply(
        chat_id=row.chat_id,
        chat_type=row.chat_type,
        sender_id=row.sender_id,
        text=REPLY,
        reply_context=row.raw["reply_context"],
        idempotency_key=f"sb-{row.pk}-0",
    )
    with httpx.Client(timeout=5.0) as http:
        bot.refresh_from_db()
        registered()[kit.platform](bot).send(reply, http)
    assert kit.sent_texts(running) == [REPLY]


def test_a_forged_request_after_a_valid_one_changes_nothing(client, kit, bot):
    assert 200 <= kit.text_message(bot, MSG_ID, TEXT).send(client).status_code < 300
    forged = kit.forge(kit.text_message(bot, "7385000000000000043", "forged"))
    assert 400 <= forged.send(client).status_code < 500
    assert list(InboundMessage.objects.values_list("text", flat=True)) == [TEXT]


# -- sends ---------------------------------------------------------------------------------


@pytest.fixture
def send(client, kit, bot):
    """send(text, http=None, part=1, parts=1): one reply part to a recorded message, as the
    dialog task sends it (a fresh adapter, the message's reply context)."""
    assert 200 <= kit.text_message(bot, MSG_ID, TEXT).send(client).status_code < 300
    row = InboundMessage.objects.get(bot=bot)
    bot.refresh_from_db()

    def send(text: str, http: httpx.Client | None = None, part: int = 1, parts: int = 1) -> None:
        reply = OutboundReply(
            chat_id=row.chat_id,
            chat_type=row.chat_type,
            sender_id=row.sender_id,
            text=text,
            reply_context=row.raw["reply_context"],
            idempotency_key=f"sb-{row.pk}-{part - 1}",
            part=part,
            parts=parts,
        )
        with http or httpx.Client(timeout=5.0) as client:
            registered()[kit.platform](bot).send(reply, client)

    return send


def send_error(send, **kwargs) -> TransportError:
    with pytest.raises(TransportError) as caught:
        send(REPLY, **kwargs)
    return caught.value


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_server_error_is_retried_and_the_retry_delivers(kit, running, send, status):
    running.plan(kit.send_path, Fault(status))
    assert send_error(send).permanent is False
    send(REPLY)
    assert kit.sent_texts(running) == [REPLY]


def test_a_send_that_times_out_is_retried_as_one_whose_answer_was_lost(kit, running, send):
    if kit.own_timeout_reason:
        pytest.skip(kit.own_timeout_reason)
    running.plan(kit.send_path, Fault(delay=1.0))
    error = send_error(send, http=httpx.Client(timeout=0.3))
    # The outbox counts a part sent again after a read timeout as a possible repeat.
    assert error.permanent is False and isinstance(error.__cause__, httpx.ReadTimeout)


def test_a_send_whose_answer_is_lost_is_retried_as_such(kit, running, send):
    running.plan(kit.send_path, Fault(hang_up=True, passthrough=True))
    error = send_error(send)
    assert error.permanent is False and isinstance(error.__cause__, httpx.RemoteProtocolError)
    assert kit.sent_texts(running) == [REPLY]  # the platform took it; only its answer was lost


def test_a_send_that_never_reached_the_platform_is_retried_as_unsent(kit, running, send):
    running.stop()
    error = send_error(send)
    assert error.permanent is False and isinstance(error.__cause__, httpx.ConnectError)


def test_a_rate_limit_is_retried_after_the_seconds_it_names(kit, running, send):
    running.plan(kit.send_path, kit.rate_limited("7"))
    error = send_error(send)
    assert (error.permanent, error.retry_after) == (False, 7.0)


def test_a_rate_limit_is_retried_after_the_http_date_it_names(kit, running, send):
    if kit.no_retry_after_date_reason:
        pytest.skip(kit.no_retry_after_date_reason)
    running.plan(kit.send_path, kit.rate_limited(email.utils.formatdate(time.time() + 30, usegmt=True)))
    error = send_error(send)
    assert error.permanent is False and 25.0 <= error.retry_after <= 30.0


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_client_error_is_permanent(kit, running, send, status):
    # Twice: DingTalk answers a refused sessionWebhook through its robot API.
    running.plan(kit.send_path, Fault(status), Fault(status))
    assert send_error(send).permanent is True
    assert kit.sent_texts(running) == []


def _token_requests(kit, fake) -> int:
    return len(fake.received(kit.token_path))


def test_a_dead_token_is_refreshed_and_the_send_repeated_once(kit, running, send):
    if kit.token_path is None:
        pytest.skip(kit.no_token_reason)
    send("warm-up", part=2, parts=2)  # a cached token, which then dies (another part: Feishu drops a repeat)
    kit.send_with_token(running)
    tokened_before = len(running.received(kit.token_send_path()))
    running.plan(kit.token_send_path(), kit.token_dead())
    send(REPLY)
    assert kit.sent_texts(running)[-1] == REPLY
    assert len(running.received(kit.token_send_path())) - tokened_before == 2
    assert _token_requests(kit, running) == 2


def test_a_token_refused_again_after_its_refresh_is_not_refreshed_twice(kit, running, send):
    if kit.token_path is None:
        pytest.skip(kit.no_token_reason)
    kit.send_with_token(running)
    running.plan(kit.token_send_path(), *[kit.token_dead()] * 3)
    assert send_error(send).permanent is False
    assert len(running.received(kit.token_send_path())) == 2
    assert _token_requests(kit, running) == 2
    assert kit.sent_texts(running) == []


def _longest_text(limit: int, unit: str) -> str:
    """A text of about 2.5 parts with no paragraph, line or sentence to split on, so the
    parts are cut at the limit itself; multi-byte characters where bytes are counted."""
    if unit == "bytes":
        return "字节a" * (limit * 5 // 2 // 7)
    return "契约c" * (limit * 5 // 2 // 3)


def test_the_longest_reply_is_sent_in_parts_that_fit(kit, running, send, bot):
    adapter = registered()[kit.platform](bot)
    limit, unit = adapter.max_reply_length, adapter.length_unit
    text = _longest_text(limit, unit)
    parts = split_reply(text, limit, unit)
    assert len(parts) == 3 and "".join(parts) == text
    assert all(limit - 4 < measure(part, unit) <= limit for part in parts[:-1])
    for index, part in enumerate(parts, start=1):
        send(part, part=index, parts=len(parts))
    assert kit.sent_texts(running) == parts
