"""Hostile bodies (tests/fuzz/hostile.py) to POST /api/v1/chat with a valid key: never a
5xx, and every refusal the documented JSON error (docs/api.md), not Django's HTML page."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from bots.models import ApiKey
from routing.models import ModelBackend
from tests.api.conftest import CHAT_URL
from tests.fuzz.hostile import hostile_payloads, huge, nested_json

pytestmark = pytest.mark.django_db

VALID = json.dumps({"bot": "echo", "text": "hello", "user": "u-1"}).encode()
DOCUMENTED_4XX = {400: {"invalid_request", "parse_error"}, 404: {"unknown_bot"}, 413: {"too_large"}}


@pytest.fixture
def key(make_bot, settings) -> str:
    """A chat key for a bot with an echo backend. The throttle is out of the way: many
    requests with one key are not what these tests are about."""
    settings.CHAT_API_RATE = "100000/min"
    make_bot(name="echo", default_backend=ModelBackend.objects.create(name="echo", kind="echo"))
    return ApiKey.issue(name="hostile", scopes=["chat"])[1]


def post(api, key: str, body: bytes):
    return api.generic("POST", CHAT_URL, body, content_type="application/json", HTTP_AUTHORIZATION=f"Api-Key {key}")


def error_of(response) -> dict:
    assert response["Content-Type"] == "application/json", (response.status_code, response.content[:200])
    return response.json()["error"]


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(payload=hostile_payloads("json", VALID))
def test_a_hostile_body_gets_an_answer_or_a_documented_json_error_never_a_5xx(api, key, payload):
    response = post(api, key, payload)
    assert response.status_code < 500, response.content[:200]
    if response.status_code != 200:
        error = error_of(response)
        assert error["code"] in DOCUMENTED_4XX.get(response.status_code, ()), (response.status_code, error)
        assert error["message"]


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_json_nested_past_the_limit_is_a_parse_error(api, key, depth):
    response = post(api, key, nested_json(depth))
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "parse_error"
    assert "nested deeper than 64 levels" in error["message"]


def test_a_body_over_the_cap_is_413_too_large_in_json(api, key, settings):
    response = post(api, key, huge("json", 2 * settings.CALLBACK_MAX_BODY_BYTES))
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "too_large"
    assert str(settings.CALLBACK_MAX_BODY_BYTES) in error["message"]
