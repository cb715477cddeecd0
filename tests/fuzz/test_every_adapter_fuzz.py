"""Mutated deliveries to every registered platform, built from each adapter's contract
kit: whatever arrives, the answer is never a 500 (the test client re-raises anything
escaping the view), and where the platform signs the body, a change to what it signs is
never recorded."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels_app.models import InboundMessage
from channels_app.registry import registered
from channels_app.tests.contract import ContractKit, Request

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Platforms whose signature does not cover the body: Telegram authenticates with a
# secret header, DingTalk signs only its timestamp, so a changed body is theirs to accept.
BODY_NOT_SIGNED = {"telegram", "dingtalk"}

edits = st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1, max_size=4,
)


def mutate(body: bytes, plan: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(body)
    for action, position, value in plan:
        at = position % (len(data) + 1)
        if action == "flip" and data:
            data[at % len(data)] ^= value or 1
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = bytes([value])
    return bytes(data)


@pytest.fixture(params=sorted(registered()))
def kit(request, db) -> ContractKit:
    kit = importlib.import_module(f"channels_app.adapters.{request.param}.tests.contract").KIT
    with kit.running() as fake:
        kit.bot = kit.make_bot(fake.url)
        yield kit


@FUZZ
@given(plan=edits, serial=st.integers(0, 10**9))
def test_a_changed_body_is_never_a_500_and_never_recorded_as_changed_where_it_is_signed(client, kit, plan, serial):
    valid = kit.text_message(kit.bot, str(serial), "hello")
    body = mutate(valid.body, plan)
    before = set(InboundMessage.objects.values_list("pk", flat=True))
    response = Request(valid.method, valid.path, body, valid.content_type, valid.headers).send(client)
    assert response.status_code < 500
    if body != valid.body and kit.platform not in BODY_NOT_SIGNED:
        # Refused, or the change fell outside what the platform signs (the plaintext
        # ToUserName/AgentID around WeCom's and WeChat's signed Encrypt): then what is
        # recorded is exactly what the platform signed.
        recorded = InboundMessage.objects.exclude(pk__in=before)
        assert [row.text for row in recorded] in ([], ["hello"])


@FUZZ
@given(header=st.text(max_size=40), value=st.text(max_size=200), serial=st.integers(0, 10**9))
def test_random_headers_are_never_a_500(client, kit, header, value, serial):
    valid = kit.text_message(kit.bot, str(10**10 + serial), "hello")
    printable = "".join(c for c in header if c.isalnum() or c == "-") or "X-Fuzz"
    response = valid.with_headers(**{printable: value.encode("latin-1", "replace").decode("latin-1")}).send(client)
    assert response.status_code < 500


@FUZZ
@given(serial=st.integers(0, 10**9))
def test_a_forged_delivery_is_never_recorded(client, kit, serial):
    msg_id = str(2 * 10**10 + serial)
    response = kit.forge(kit.text_message(kit.bot, msg_id, "hello")).send(client)
    assert 400 <= response.status_code < 500
    assert not InboundMessage.objects.filter(platform_message_id=kit.platform_message_id(msg_id)).exists()
