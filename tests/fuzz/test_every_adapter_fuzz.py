"""Mutated and hostile deliveries to every registered platform, built from each adapter's
contract kit: whatever arrives, the answer is never a 5xx (the test client re-raises
anything escaping the view), and where the platform signs the body, a change to what it
signs is never recorded. Hostile bodies (tests/fuzz/hostile.py) go in twice: as they are,
before any signature check can refuse them, and signed with the bot's credentials, so
that what the adapter parses after its checks is the hostile payload itself."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels_app.models import InboundMessage
from channels_app.registry import registered
from channels_app.tests.contract import ContractKit, Request
from tests.fuzz.hostile import hostile_payloads, nested

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HOSTILE = settings(
    FUZZ,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Platforms whose signature does not cover the body: Telegram authenticates with a
# secret header, DingTalk signs only its timestamp, so a changed body is theirs to accept.
BODY_NOT_SIGNED = {"telegram", "dingtalk"}

edits = st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=4,
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


def _refused_with_a_reason(response) -> bool:
    """A 4xx whose body says why (the view's plain-text reason, e.g. "malformed")."""
    return 400 <= response.status_code < 500 and response.content.strip() != b""


@HOSTILE
@given(data=st.data(), serial=st.integers(0, 10**9))
def test_a_hostile_body_is_never_a_5xx_before_or_after_the_signature_check(client, kit, data, serial):
    valid = kit.message_payload(kit.bot, str(3 * 10**10 + serial), "hello")
    payload = data.draw(hostile_payloads(kit.payload_format, valid), label="payload")
    delivered = kit.text_message(kit.bot, str(3 * 10**10 + serial), "hello")
    unsigned = Request(delivered.method, delivered.path, payload, delivered.content_type, delivered.headers)
    for request in (unsigned, kit.deliver(kit.bot, payload)):
        response = request.send(client)
        assert response.status_code < 500, (response.status_code, response.content[:200])
        assert response.status_code < 300 or _refused_with_a_reason(response), response.status_code


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_a_body_nested_past_the_limit_is_refused_with_a_reason(client, kit, depth):
    """The case found by hand: {"a":{"a":…}} 1,000 deep (6 KB) was a RecursionError, an
    HTML 500 and an ERROR traceback, on Feishu before any signature check. (Feishu takes
    a decrypted body that is not JSON for a sign of the wrong Encrypt Key: 401. Deep XML,
    signed, is well-formed: WeCom and WeChat acknowledge it as a message they ignore.)"""
    body = nested(kit.payload_format, depth)
    delivered = kit.text_message(kit.bot, "4711", "hello")
    unsigned = Request(delivered.method, delivered.path, body, delivered.content_type, delivered.headers)
    assert _refused_with_a_reason(unsigned.send(client))
    signed = kit.deliver(kit.bot, body).send(client)
    if kit.payload_format == "json":
        assert _refused_with_a_reason(signed), (signed.status_code, signed.content)
    else:
        assert signed.status_code < 500
    assert not InboundMessage.objects.exists()
