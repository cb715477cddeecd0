"""Browser-side hardening of the console: a Content-Security-Policy, no framing, and
sessions that end when left alone (or after SESSION_COOKIE_AGE in any case)."""

from __future__ import annotations

import time

import pytest
from django.contrib.messages import get_messages

from bots.console_security import LAST_SEEN_KEY, SIGNED_IN_AT_KEY


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


@pytest.mark.parametrize("page", ["/admin/", "/admin/bots/bot/", "/admin/bots/bot/add/", "/admin/2fa/backup-codes/"])
def test_console_pages_allow_scripts_from_our_own_origin_only(console, page):
    response = console.get(page)
    assert response.status_code == 200
    policy = directives(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]
    assert response["X-Frame-Options"] == "DENY"


def test_the_sign_in_pages_carry_the_policy_too(client):
    response = client.get("/admin/2fa/login/")
    assert directives(response)["script-src"] == ["'self'"]


@pytest.mark.django_db
def test_callbacks_and_health_checks_get_no_console_policy(client):
    assert "Content-Security-Policy" not in client.get("/healthz")
    assert "Content-Security-Policy" not in client.get("/callback/wecom/00000000-0000-0000-0000-000000000000/")


def set_clock(client, **ages: float) -> None:
    session = client.session
    for key, age in ages.items():
        session[key] = time.time() - age
    session.save()


def test_a_console_left_alone_signs_out(console, settings):
    set_clock(console, **{LAST_SEEN_KEY: settings.SESSION_IDLE_TIMEOUT + 1})
    response = console.get("/admin/bots/bot/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/2fa/login/?next=/admin/bots/bot/"
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "You were signed out after 30 minutes without activity. Sign in again."
    ]
    assert "_auth_user_id" not in console.session
    assert console.get("/admin/").status_code == 302


def test_a_console_in_use_stays_signed_in_and_notes_the_activity(console, settings):
    set_clock(console, **{LAST_SEEN_KEY: settings.SESSION_IDLE_TIMEOUT - 5})
    assert console.get("/admin/").status_code == 200
    assert time.time() - console.session[LAST_SEEN_KEY] < 5


def test_a_busy_console_still_signs_out_after_the_session_age(console, settings):
    set_clock(console, **{SIGNED_IN_AT_KEY: settings.SESSION_COOKIE_AGE + 1, LAST_SEEN_KEY: 10})
    response = console.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/2fa/login/")
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Your sign-in expired after 8 hours. Sign in again."
    ]


def test_the_idle_timeout_is_a_setting(console, settings):
    settings.SESSION_IDLE_TIMEOUT = 60
    set_clock(console, **{LAST_SEEN_KEY: 61})
    assert console.get("/admin/").status_code == 302
