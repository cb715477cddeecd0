"""The shared contract: every registered adapter rejects a forged request, answers its
platform's handshake, records a text message once (re-deliveries included) and sends a
reply through the platform's API. Each adapter brings a kit in
channels_app/adapters/<platform>/tests/contract.py; a platform without one fails here."""

from __future__ import annotations

import importlib

import httpx
import pytest

from channels_app.message import OutboundReply
from channels_app.models import InboundMessage
from channels_app.registry import registered
from channels_app.tests.contract import ContractKit

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
    reply = OutboundReply(chat_id=row.chat_id, chat_type=row.chat_type, sender_id=row.sender_id, text=REPLY,
                          reply_context=row.raw["reply_context"], idempotency_key=f"sb-{row.pk}-0")
    with httpx.Client(timeout=5.0) as http:
        bot.refresh_from_db()
        registered()[kit.platform](bot).send(reply, http)
    assert kit.sent_texts(running) == [REPLY]


def test_a_forged_request_after_a_valid_one_changes_nothing(client, kit, bot):
    assert 200 <= kit.text_message(bot, MSG_ID, TEXT).send(client).status_code < 300
    forged = kit.forge(kit.text_message(bot, "7385000000000000043", "forged"))
    assert 400 <= forged.send(client).status_code < 500
    assert list(InboundMessage.objects.values_list("text", flat=True)) == [TEXT]
