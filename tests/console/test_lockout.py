"""Login hardening: failed passwords and codes lock one account from one address for a
while, audited, with a message a person understands."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from audit.models import AuthEvent, AuthEventKind
from bots.twofactor import PENDING_KEY
from tests.console.conftest import wait_out_throttle
from tests.fixtures import PASSWORD, fresh_code, sign_in

LOGIN = "/admin/2fa/login/"
VERIFY = "/admin/2fa/verify/"
LOCKED = b"Too many failed attempts for this account from your address"


def wrong_password(client: Client, username: str = "alice", **extra):
    return client.post(LOGIN, {"username": username, "password": "not the password"}, **extra)


def right_password(client: Client, username: str = "alice", **extra):
    return client.post(LOGIN, {"username": username, "password": PASSWORD}, **extra)


def wrong_code(device) -> str:
    return "000000" if fresh_code(device) != "000000" else "111111"


def test_five_wrong_passwords_lock_the_account_from_that_address(client, staff_user, totp_device):
    for _ in range(4):
        response = wrong_password(client)
        assert response.status_code == 200 and b"That user name and password do not match." in response.content
    response = wrong_password(client)
    assert LOCKED in response.content
    assert b"locked for 15 more minutes" in response.content
    [locked] = AuthEvent.objects.filter(kind=AuthEventKind.LOCKED_OUT)
    assert locked.username == "alice" and locked.remote_addr == "127.0.0.1"
    assert locked.detail == "5 failed attempts within 15 min (last: password); locked for 15 min"

    # The right password changes nothing while the lock lasts, and is not even checked.
    logins_failed = AuthEvent.objects.filter(kind=AuthEventKind.LOGIN_FAILED).count()
    response = right_password(client)
    assert response.status_code == 429 and LOCKED in response.content
    assert PENDING_KEY not in client.session
    refused = AuthEvent.objects.filter(kind=AuthEventKind.LOGIN_FAILED).latest("id")
    assert refused.detail == "refused: locked out"
    assert AuthEvent.objects.filter(kind=AuthEventKind.LOGIN_FAILED).count() == logins_failed + 1
    assert not AuthEvent.objects.filter(kind=AuthEventKind.LOGIN).exists()


def test_the_lock_is_per_account_and_address(client, staff_user, totp_device, django_user_model):
    django_user_model.objects.create_user(username="bob", password=PASSWORD, is_staff=True)
    for _ in range(5):
        wrong_password(client)
    assert LOCKED in right_password(client).content

    elsewhere = Client(REMOTE_ADDR="10.0.0.2")
    assert right_password(elsewhere)["Location"].startswith(VERIFY)
    other_account = Client()
    assert right_password(other_account, "bob")["Location"].startswith("/admin/2fa/enroll/")


def test_wrong_codes_count_towards_the_same_lock(client, staff_user, totp_device):
    for _ in range(3):
        wrong_password(client)
    assert right_password(client)["Location"].startswith(VERIFY)
    assert client.post(VERIFY, {"code": wrong_code(totp_device)}).status_code == 200
    wait_out_throttle(totp_device)
    response = client.post(VERIFY, {"code": wrong_code(totp_device)})
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    assert LOCKED in client.get(response["Location"]).content
    [locked] = AuthEvent.objects.filter(kind=AuthEventKind.LOCKED_OUT)
    assert locked.user == staff_user and "(last: sign-in code)" in locked.detail

    # The password step is locked too, and the code step has nothing to continue.
    wait_out_throttle(totp_device)
    assert right_password(client).status_code == 429
    assert client.post(VERIFY, {"code": fresh_code(totp_device)})["Location"].startswith(LOGIN)


def test_a_lock_that_starts_during_the_code_step_ends_a_pending_sign_in(staff_user, totp_device):
    first, second = Client(), Client()
    assert right_password(first)["Location"].startswith(VERIFY)
    for _ in range(5):
        wrong_password(second)
    response = first.post(VERIFY, {"code": fresh_code(totp_device)})
    assert response["Location"].startswith(LOGIN)
    assert not AuthEvent.objects.filter(kind=AuthEventKind.LOGIN).exists()


def test_a_complete_sign_in_forgets_earlier_failures(client, staff_user, totp_device):
    for _ in range(4):
        wrong_password(client)
    sign_in(client, "alice", totp_device)
    client.post("/admin/logout/")
    for _ in range(4):
        response = wrong_password(client)
    assert LOCKED not in response.content
    assert not AuthEvent.objects.filter(kind=AuthEventKind.LOCKED_OUT).exists()


def test_the_lock_ends_by_itself(client, staff_user, totp_device, settings):
    settings.LOGIN_LOCKOUT_SECONDS = 1
    for _ in range(5):
        wrong_password(client)
    assert right_password(client).status_code == 429
    time.sleep(1.2)
    assert right_password(client)["Location"].startswith(VERIFY)


def test_failures_outside_the_window_do_not_add_up(client, staff_user, totp_device, settings):
    settings.LOGIN_FAILURE_WINDOW = 1
    for _ in range(4):
        wrong_password(client)
    time.sleep(1.2)
    response = wrong_password(client)
    assert LOCKED not in response.content
    assert right_password(client)["Location"].startswith(VERIFY)


@pytest.mark.parametrize("limit", [1, 3])
def test_the_limit_is_a_setting(client, staff_user, totp_device, settings, limit):
    settings.LOGIN_FAILURE_LIMIT = limit
    for _ in range(limit - 1):
        assert LOCKED not in wrong_password(client).content
    assert LOCKED in wrong_password(client).content


def test_sign_in_still_works_when_redis_is_down(client, staff_user, totp_device, settings):
    # Fail open: the console must stay reachable to repair things; django-otp still
    # pauses a device after every wrong code.
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient", "SOCKET_CONNECT_TIMEOUT": 0.5},
        }
    }
    assert b"do not match" in wrong_password(client).content
    sign_in(client, "alice", totp_device)
    assert client.get("/admin/").status_code == 200
