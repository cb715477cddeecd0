"""Helpers for the console tests: an auditor, and a session whose last code is old."""

from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from audit.roles import auditors_group
from bots.otp_devices import AuthenticatorDevice
from bots.stepup import FRESH_SECONDS, VERIFIED_AT_KEY
from tests.fixtures import PASSWORD, sign_in

STEP_UP = "/admin/2fa/step-up/"


def code_age(client: Client, seconds: float) -> None:
    """Pretend the session's last second-factor code was entered `seconds` ago."""
    session = client.session
    session[VERIFIED_AT_KEY] = time.time() - seconds
    session.save()


def make_stale(client: Client) -> None:
    code_age(client, FRESH_SECONDS + 1)


def sent_to_step_up(response, back: str) -> bool:
    """A redirect to the step-up page that comes back to `back`."""
    if response.status_code != 302:
        return False
    target = urlsplit(response["Location"])
    return target.path == STEP_UP and parse_qs(target.query).get("next") == [back]


def wait_out_throttle(device) -> None:
    """django-otp pauses a device for a second or more after a wrong code; a person
    waits that long anyway, so move the failure into the past instead of sleeping."""
    device.refresh_from_db()
    if device.throttling_failure_timestamp:
        device.throttling_failure_timestamp -= timedelta(seconds=600)
        device.save(update_fields=["throttling_failure_timestamp"])


@pytest.fixture
def stale_console(console) -> Client:
    """Signed in with password and code, but the code is older than five minutes."""
    make_stale(console)
    return console


@pytest.fixture
def auditor(django_user_model):
    user = django_user_model.objects.create_user(username="audrey", password=PASSWORD, is_staff=True)
    user.groups.add(auditors_group())
    return user


@pytest.fixture
def auditor_console(auditor) -> Client:
    client = Client()
    sign_in(client, auditor.username, AuthenticatorDevice.objects.create(user=auditor, name="phone", confirmed=True))
    return client
