"""Shared fixtures, loaded for the whole repository by the root conftest.py: users with
real TOTP devices, an OTP-verified console client, bots, and clean-up of the Redis keys
this test run made (and only those)."""

from __future__ import annotations

import os
import time

import pytest
from django.conf import settings
from django.test import Client
from django_otp.oath import TOTP

from bots.otp_devices import AuthenticatorDevice, BackupCodeDevice

PASSWORD = "a long test password 42"


def totp_code(device: AuthenticatorDevice, offset_steps: int = 0) -> str:
    """The code an authenticator app shows now (or offset_steps periods later)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + offset_steps * device.step
    return f"{totp.token():0{device.digits}d}"


def fresh_code(device: AuthenticatorDevice) -> str:
    """A code that this device has not accepted yet (django-otp refuses a code twice
    within one time step, as it should), by letting the device forget the last step."""
    device.refresh_from_db()
    device.last_t = -1
    device.save(update_fields=["last_t"])
    return totp_code(device)


def give_backup_codes(user, *codes: str) -> BackupCodeDevice:
    """A set of backup codes of our choosing for this user, stored (hashed) as
    enrollment stores the ones it issues."""
    device = BackupCodeDevice.objects.create(user=user, name="backup codes")
    device.add_codes(list(codes))
    return device


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password=PASSWORD, is_staff=True, is_superuser=True)


@pytest.fixture
def totp_device(staff_user) -> AuthenticatorDevice:
    return AuthenticatorDevice.objects.create(user=staff_user, name="phone", confirmed=True)


def sign_in(client: Client, username: str, device: AuthenticatorDevice, password: str = PASSWORD, **extra) -> None:
    """Sign in through the real two-step console login."""
    response = client.post("/admin/2fa/login/", {"username": username, "password": password}, **extra)
    assert response.status_code == 302, response.content[:500]
    response = client.post("/admin/2fa/verify/", {"code": fresh_code(device)}, **extra)
    assert response.status_code == 302 and "/admin/2fa/" not in response["Location"], response.content[:500]


@pytest.fixture
def console(staff_user, totp_device) -> Client:
    """A browser-like client signed in to the console with password and TOTP."""
    client = Client()
    sign_in(client, staff_user.username, totp_device)
    return client


@pytest.fixture
def backend(db):
    from routing.models import ModelBackend

    return ModelBackend.objects.create(name="echo", kind="echo")


@pytest.fixture
def make_bot(db):
    from bots.models import Bot

    def make(**fields) -> Bot:
        fields.setdefault("name", f"bot-{Bot.objects.count() + 1}")
        fields.setdefault("platform", "wecom")
        fields.setdefault("extra", {"agent_id": 1000002} if fields["platform"] == "wecom" else {})
        return Bot.objects.create(**fields)

    return make


@pytest.fixture
def committed_wecom_bot(transactional_db):
    """A WeCom bot with fresh credentials, committed (outside a test transaction), as the
    callback path sees bots in production: its INSERT and hand-off then run as deployed."""
    import base64
    import secrets

    from bots.models import Bot

    return Bot.objects.create(
        name="committed-wecom",
        platform="wecom",
        app_id="wwcommitted",
        app_secret="s",
        token=secrets.token_urlsafe(12),
        encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
        extra={"agent_id": 1000002},
    )


@pytest.fixture(autouse=True)
def _forget_console_lockouts():
    """Console lockouts (bots/lockout.py) live in Redis, keyed by user name and address:
    every test signs in as "alice" from 127.0.0.1, so one test's lock must not leak
    into the next."""
    from django.core.cache import cache

    try:
        cache.delete_pattern("console-lockout:*")
    except Exception as exc:  # no Redis: the tests that need it fail on their own, with a clearer error
        print(f"warning: could not clear console lockouts: {exc}")


@pytest.fixture(autouse=True)
def _forget_cached_configuration():
    """The per-process copies of bots and rules (the callback view's, the worker's):
    a rolled-back test leaves no change behind to invalidate them, and SQLite may hand
    the next test's bot the same primary key."""
    from channels_app.views import _bots
    from routing.configcache import _cache

    _bots.clear()
    _cache.clear()


@pytest.fixture(scope="session", autouse=True)
def _forget_redis_keys_of_this_run():
    yield
    from django_redis import get_redis_connection

    try:
        redis = get_redis_connection("default")
        prefix = settings.CACHES["default"]["KEY_PREFIX"]
        for pattern in (f"{prefix}:*", f"*{os.environ['CELERY_TASK_DEFAULT_QUEUE']}*"):
            for key in redis.scan_iter(match=pattern, count=500):
                redis.delete(key)
    except Exception as exc:  # clean-up must not turn a green run red
        print(f"warning: could not clean this run's Redis keys: {exc}")
