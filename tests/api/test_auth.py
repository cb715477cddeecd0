"""Who may call the API: each refusal has its status, a JSON error a person can act on,
a log line and a (rate-limited) audit event that never holds the key."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuthEvent, AuthEventKind
from bots import api_auth
from tests.api.conftest import EXPORT_URL, call

pytestmark = pytest.mark.django_db

BODY = {"bot": "echoer", "text": "hi", "user": "u"}


@pytest.fixture(autouse=True)
def echoer(make_bot, backend):
    return make_bot(name="echoer", default_backend=backend)


def refusals() -> list[AuthEvent]:
    return list(AuthEvent.objects.filter(kind=AuthEventKind.API_KEY_REFUSED).order_by("id"))


def assert_refused(response, status: int, code: str, *words: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    for word in words:
        assert word in error["message"]
    if status == 401:
        assert response["WWW-Authenticate"] == 'Api-Key realm="api"'
    return error


def test_a_good_key_is_let_in(api, issue_key):
    _, key = issue_key()
    assert call(api, key, BODY).status_code == 200
    assert refusals() == []


def test_no_header(api):
    assert_refused(call(api, None, BODY), 401, "missing_credentials", "Authorization: Api-Key")
    [event] = refusals()
    assert event.detail.startswith("missing_credentials") and event.remote_addr == "127.0.0.1"


@pytest.mark.parametrize("header", ["Bearer sb_12345678_abc", "Api-Key", "Api-Key a b", "sb_12345678_abc"])
def test_malformed_header(api, header):
    response = api.post("/api/v1/chat", BODY, format="json", HTTP_AUTHORIZATION=header)
    assert_refused(response, 401, "malformed_credentials", "Api-Key <key>")
    assert [e.detail.split(":")[0] for e in refusals()] == ["malformed_credentials"]


def test_unknown_key(api, issue_key, caplog):
    row, key = issue_key()
    forged = key[:-4] + "AAAA"
    with caplog.at_level(logging.WARNING, logger="switchboard.api"):
        assert_refused(call(api, forged, BODY), 401, "unknown_key", "whole key")
    [event] = refusals()
    assert row.prefix in event.detail  # the claimed prefix helps find who it was meant to be
    assert forged not in event.detail and forged not in caplog.text
    assert forged.rsplit("_", 1)[1] not in caplog.text


def test_revoked_key(api, issue_key):
    row, key = issue_key()
    row.revoke()
    assert_refused(call(api, key, BODY), 401, "key_revoked", "revoked")
    [event] = refusals()
    assert event.username == f"api key {row.prefix} (crm)" and event.username in event.detail
    assert key not in event.detail


def test_expired_key(api, issue_key):
    row, key = issue_key(expires_at=timezone.now() - timedelta(minutes=1))
    error = assert_refused(call(api, key, BODY), 401, "key_expired", "expired", "rotate")
    assert f"{row.expires_at:%Y-%m-%d}" in error["message"]
    assert refusals()[0].detail.startswith("key_expired")


def test_key_from_a_network_it_is_not_allowed_from(api, issue_key):
    row, key = issue_key(allowed_cidrs=["10.0.0.0/8", "2001:db8::/32"])

    assert call(api, key, BODY, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert call(api, key, BODY, REMOTE_ADDR="2001:db8::5").status_code == 200
    assert_refused(call(api, key, BODY, REMOTE_ADDR="192.0.2.10"), 403, "ip_not_allowed", "192.0.2.10")
    [event] = refusals()
    assert event.remote_addr == "192.0.2.10" and row.prefix in event.detail


def test_a_forged_forwarded_for_does_not_get_a_key_in(api, issue_key, settings):
    settings.TRUSTED_PROXIES = []
    _, key = issue_key(allowed_cidrs=["10.0.0.0/8"])
    response = call(api, key, BODY, REMOTE_ADDR="192.0.2.10", HTTP_X_FORWARDED_FOR="10.1.2.3")
    assert_refused(response, 403, "ip_not_allowed", "192.0.2.10")


def test_the_client_address_behind_a_trusted_proxy_is_checked(api, issue_key, settings):
    import ipaddress

    settings.TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
    _, key = issue_key(allowed_cidrs=["10.0.0.0/8"])
    assert call(api, key, BODY, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.1.2.3").status_code == 200
    refused = call(api, key, BODY, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.7")
    assert_refused(refused, 403, "ip_not_allowed", "192.0.2.7")


def test_key_without_the_scope(api, issue_key):
    row, chat_only = issue_key(scopes=["chat"])
    _, audit_only = issue_key(name="auditor", scopes=["audit:read"])

    assert_refused(call(api, audit_only, BODY), 403, "missing_scope", "`chat`", "audit:read")
    export = api.get(EXPORT_URL, HTTP_AUTHORIZATION=f"Api-Key {chat_only}")
    assert_refused(export, 403, "missing_scope", "`audit:read`")
    assert not AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED).exists()
    assert [e.detail.split(":")[0] for e in refusals()] == ["missing_scope", "missing_scope"]


def test_refusals_are_recorded_once_a_minute_per_key_and_reason(api, issue_key):
    row, key = issue_key()
    row.revoke()
    for _ in range(3):
        assert call(api, key, BODY).status_code == 401
    other_row, other_key = issue_key(name="other")
    other_row.revoke()
    call(api, other_key, BODY)

    assert [e.detail.split(";")[0] for e in refusals()] == [
        f"key_revoked: api key {row.prefix} (crm)",
        f"key_revoked: api key {other_row.prefix} (other)",
    ]


def test_keyless_refusals_are_recorded_once_a_minute_per_address_and_capped(api, monkeypatch):
    monkeypatch.setattr(api_auth, "UNATTRIBUTED_EVENTS_PER_MINUTE", 2)
    # Made-up prefixes must not open a new slot each: an attacker chooses them freely.
    for prefix in ("00000001", "00000002", "00000003"):
        call(api, f"sb_{prefix}_guess", BODY, REMOTE_ADDR="192.0.2.1")
    assert len(refusals()) == 1

    for address in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):
        assert call(api, "sb_00000001_guess", BODY, REMOTE_ADDR=address).status_code == 401
    assert [e.remote_addr for e in refusals()] == ["192.0.2.1", "192.0.2.2"]


def test_an_unknown_endpoint_or_method_gets_a_json_error(api, issue_key):
    _, key = issue_key()
    typo = api.post("/api/v1/chat/", BODY, format="json", HTTP_AUTHORIZATION=f"Api-Key {key}")
    wrong_method = api.get("/api/v1/chat", HTTP_AUTHORIZATION=f"Api-Key {key}")

    assert typo.status_code == 404 and typo.json()["error"]["code"] == "not_found"
    assert "/api/v1/schema/" in typo.json()["error"]["message"]
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
