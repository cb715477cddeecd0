"""The console sign-in: no admin page without a verified second factor, enrollment with
QR code, manual key and backup codes, and the ways the two steps refuse a caller."""

from __future__ import annotations

import re
import time
from base64 import b32decode
from datetime import timedelta
from html import unescape
from io import StringIO
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
import qrcode
import qrcode.constants
from django.contrib import admin
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory
from django.urls import reverse

from audit.models import AuthEvent, AuthEventKind
from bots.otp_devices import AuthenticatorDevice, BackupCode, BackupCodeDevice
from bots.twofactor import BACKUP_CODE_COUNT, MAX_CODE_FAILURES, PENDING_KEY, PENDING_SECONDS
from tests.conftest import PASSWORD, fresh_code, totp_code
from tests.fixtures import give_backup_codes

LOGIN = "/admin/2fa/login/"
VERIFY = "/admin/2fa/verify/"
ENROLL = "/admin/2fa/enroll/"
BACKUP_CODES = "/admin/2fa/backup-codes/"


def _admin_pages() -> list:
    """The index plus every registered model's changelist and (where the ModelAdmin
    allows adding at all) add page, read from the live registry so a newly registered
    model is covered without touching this file."""
    # A user holding every permission: what remains refused is refused by the ModelAdmin.
    request = RequestFactory().get("/admin/")
    request.user = SimpleNamespace(is_active=True, is_staff=True, is_superuser=True, has_perm=lambda *a, **k: True)
    pages = [pytest.param("/admin/", id="index")]
    for model, model_admin in admin.site._registry.items():
        label = f"{model._meta.app_label}_{model._meta.model_name}"
        pages.append(pytest.param(reverse(f"admin:{label}_changelist"), id=f"{label}-changelist"))
        if model_admin.has_add_permission(request):
            pages.append(pytest.param(reverse(f"admin:{label}_add"), id=f"{label}-add"))
    return pages


ADMIN_PAGES = _admin_pages()


def location(response) -> str:
    assert response.status_code == 302, (response.status_code, response.content[:300])
    return response["Location"]


def next_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["next"][0]


def assert_sent_to_2fa_login(response, page: str) -> None:
    assert response.redirect_chain, f"{page} answered {response.status_code} without a redirect"
    assert all(status == 302 for _, status in response.redirect_chain)
    final = response.redirect_chain[-1][0]
    assert urlsplit(final).path == LOGIN
    assert next_of(final) == page
    # The login page itself asks for the password again: no half-signed-in shortcut.
    assert b'name="password"' in response.content


def backup_codes_on(page: str) -> list[str]:
    match = re.search(r'id="backup-codes">(.*?)</ul>', page, re.S)
    return re.findall(r"<li>([^<]+)</li>", match.group(1)) if match else []


def manual_key(response) -> str:
    match = re.search(r'id="manual-key">([^<]*)<', response.content.decode())
    assert match, "enrollment page has no manual key"
    return unescape(match.group(1)).strip()


def qr_dark_modules(svg: str) -> set[tuple[int, int]]:
    """Dark modules of the QR code, read back from qrcode's SVG path (one square per module)."""
    squares = [
        (float(x0), float(y0), float(x1))
        for x0, y0, x1 in re.findall(r"M([\d.]+),([\d.]+)H([\d.]+)V[\d.]+H[\d.]+z", svg)
    ]
    assert squares, "no QR modules in the SVG"
    size = squares[0][2] - squares[0][0]
    left = min(x for x, _, _ in squares)
    top = min(y for _, y, _ in squares)
    return {(round((x - left) / size), round((y - top) / size)) for x, y, _ in squares}


def qr_modules_for(data: str, error_correction: int) -> set[tuple[int, int]]:
    code = qrcode.QRCode(border=0, error_correction=error_correction)
    code.add_data(data)
    code.make(fit=True)
    return {(col, row) for row, line in enumerate(code.get_matrix()) for col, dark in enumerate(line) if dark}


def code_not_accepted_by(device: AuthenticatorDevice) -> str:
    """A six-digit code that is not valid in any step the device tolerates right now."""
    valid = {totp_code(device, offset) for offset in range(-device.tolerance - 1, device.tolerance + 2)}
    return next(code for code in (f"{n:06d}" for n in range(0, 1000000, 111111)) if code not in valid)


def wait_out_throttle(device: AuthenticatorDevice) -> None:
    """django-otp locks a device for a second or more after a wrong code; a person waits
    that long anyway, so move the failure into the past instead of sleeping."""
    device.refresh_from_db()
    device.throttling_failure_timestamp -= timedelta(seconds=60)
    device.save(update_fields=["throttling_failure_timestamp"])


def is_verified_console(client: Client) -> bool:
    response = client.get("/admin/")
    return response.status_code == 200 and b"Switchboard console" in response.content


def events(kind: str, **filters) -> list[AuthEvent]:
    return list(AuthEvent.objects.filter(kind=kind, **filters))


@pytest.fixture
def enrolling(staff_user) -> Client:
    """A client past the password step of a user who has no device yet."""
    client = Client()
    response = client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    assert location(response) == f"{ENROLL}?next=%2Fadmin%2F"
    return client


def enroll(client: Client) -> list[str]:
    """Finish enrollment the way a person does; returns the backup codes shown."""
    client.get(ENROLL)
    device = AuthenticatorDevice.objects.get(confirmed=False)
    response = client.post(ENROLL, {"code": totp_code(device)})
    assert response.status_code == 200
    return backup_codes_on(response.content.decode())


def stored_backup_codes(user) -> int:
    return BackupCode.objects.filter(device__user=user).count()


# (a) every admin page needs a verified second factor


def test_admin_pages_cover_the_projects_models():
    """Guards the parametrised tests below against passing because the registry was empty."""
    ids = {param.id for param in ADMIN_PAGES}
    for label in [
        "bots_bot",
        "bots_apikey",
        "bots_adminaccessrule",
        "routing_modelbackend",
        "routing_routingrule",
        "audit_authevent",
        "channels_app_inboundmessage",
        "auth_user",
    ]:
        assert f"{label}-changelist" in ids
    assert "bots_bot-add" in ids
    assert "audit_authevent-add" not in ids  # read-only admin: the add page does not exist for anyone


@pytest.mark.django_db
@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_anonymous_visitor_is_sent_to_the_2fa_login(client, page):
    assert_sent_to_2fa_login(client.get(page, follow=True), page)


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_password_only_session_is_sent_to_the_2fa_login(client, staff_user, totp_device, page):
    # A session authenticated by password but never OTP-verified: what a bug or a stolen
    # pre-2FA cookie would give an attacker. The superuser flag must not help.
    client.force_login(staff_user)
    assert_sent_to_2fa_login(client.get(page, follow=True), page)


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_verified_console_opens_every_admin_page(console, page):
    response = console.get(page)
    assert response.status_code == 200, response.content[:500]
    assert b"Switchboard console" in response.content


# (b) first-time enrollment


def test_password_step_alone_does_not_sign_in(enrolling):
    assert not events(AuthEventKind.LOGIN)
    assert not is_verified_console(enrolling)
    assert "_auth_user_id" not in enrolling.session


def test_enrollment_page_shows_the_devices_key_as_qr_and_text(enrolling):
    response = enrolling.get(ENROLL)
    assert response.status_code == 200
    device = AuthenticatorDevice.objects.get()
    assert not device.confirmed

    key = manual_key(response)
    assert re.fullmatch(r"[A-Z2-7]{4}( [A-Z2-7]{1,4})+", key), key
    assert b32decode(key.replace(" ", "")) == device.bin_key

    page = response.content.decode()
    svg = re.search(r'<div class="sb-qr"><svg\b.*?</svg>', page, re.S)
    assert svg, "no inline SVG QR code on the enrollment page"
    assert "otpauth://totp/" in device.config_url and "issuer=Switchboard" in device.config_url
    shown = qr_dark_modules(svg.group(0))
    levels = [
        qrcode.constants.ERROR_CORRECT_L,
        qrcode.constants.ERROR_CORRECT_M,
        qrcode.constants.ERROR_CORRECT_Q,
        qrcode.constants.ERROR_CORRECT_H,
    ]
    assert any(shown == qr_modules_for(device.config_url, level) for level in levels), (
        "the QR code does not encode this device's otpauth:// URL"
    )

    # A reload must not change the key, or a phone that already scanned it is useless.
    assert manual_key(enrolling.get(ENROLL)) == key
    assert AuthenticatorDevice.objects.count() == 1


def test_enrollment_refuses_a_wrong_code_then_accepts_the_right_one(enrolling, staff_user):
    enrolling.get(ENROLL)
    device = AuthenticatorDevice.objects.get()

    response = enrolling.post(ENROLL, {"code": code_not_accepted_by(device)})
    assert response.status_code == 200
    assert b"That code does not match" in response.content
    device.refresh_from_db()
    assert not device.confirmed
    [failed] = events(AuthEventKind.OTP_FAILED)
    assert failed.user == staff_user and failed.detail == "wrong code at enrollment"
    assert not is_verified_console(enrolling)

    wait_out_throttle(device)
    response = enrolling.post(ENROLL, {"code": totp_code(device)})
    # The codes come in this very response: they are never parked in the session.
    assert response.status_code == 200
    page = response.content.decode()
    device.refresh_from_db()
    assert device.confirmed
    assert events(AuthEventKind.OTP_ENROLLED, user=staff_user)
    assert events(AuthEventKind.LOGIN, user=staff_user)
    assert is_verified_console(enrolling)

    shown = backup_codes_on(page)
    assert len(shown) == len(set(shown)) == BACKUP_CODE_COUNT == 10
    assert stored_backup_codes(staff_user) == 10
    assert not any(code in str(enrolling.session.items()) for code in shown)
    assert 'href="/admin/" id="continue"' in page
    assert 'action="/admin/2fa/backup-codes/"' in page

    again = enrolling.get(BACKUP_CODES).content.decode()
    assert 'id="backup-codes"' not in again
    assert not any(code in again for code in shown)
    assert "You have 10 unused backup codes." in again


def test_backup_code_signs_in_exactly_once(enrolling, staff_user):
    codes = enroll(enrolling)
    code = codes[3]

    first = Client()
    assert location(first.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})).startswith(VERIFY)
    assert location(first.post(VERIFY, {"code": code})) == "/admin/"
    assert is_verified_console(first)
    assert stored_backup_codes(staff_user) == 9
    assert b"You have 9 unused backup codes." in first.get(BACKUP_CODES).content

    second = Client()
    second.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    response = second.post(VERIFY, {"code": code})
    assert response.status_code == 200
    assert b"That code is not valid" in response.content
    assert not is_verified_console(second)


def test_new_backup_codes_replace_the_old_set(enrolling, staff_user):
    old_codes = enroll(enrolling)
    response = enrolling.post(BACKUP_CODES)
    assert response.status_code == 200
    new_codes = backup_codes_on(response.content.decode())
    assert len(new_codes) == BACKUP_CODE_COUNT and not set(new_codes) & set(old_codes)
    assert stored_backup_codes(staff_user) == BACKUP_CODE_COUNT
    # Shown once: the page does not show them again.
    assert not backup_codes_on(enrolling.get(BACKUP_CODES).content.decode())

    # The old set is gone, the new one signs in.
    other = Client()
    other.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    assert other.post(VERIFY, {"code": old_codes[0]}).status_code == 200
    wait_out_throttle(BackupCodeDevice.objects.get(user=staff_user))
    assert location(other.post(VERIFY, {"code": new_codes[0]})) == "/admin/"


# (c) refusals


def test_wrong_password_is_refused_and_audited(client, staff_user):
    response = client.post(LOGIN, {"username": staff_user.username, "password": "not the password"})
    assert response.status_code == 200
    assert b"That user name and password do not match." in response.content
    assert PENDING_KEY not in client.session
    [failed] = events(AuthEventKind.LOGIN_FAILED)
    assert failed.username == staff_user.username
    assert location(client.get(VERIFY)).startswith(LOGIN)


def test_non_staff_user_is_refused_even_with_the_right_password(client, django_user_model):
    django_user_model.objects.create_user(username="bob", password=PASSWORD)
    response = client.post(LOGIN, {"username": "bob", "password": PASSWORD})
    assert response.status_code == 200
    assert b"This account has no access to the console." in response.content
    assert PENDING_KEY not in client.session
    [failed] = events(AuthEventKind.LOGIN_FAILED, username="bob")
    assert failed.detail == "not a staff account"
    assert location(client.get(ENROLL)).startswith(LOGIN)
    assert not AuthenticatorDevice.objects.exists()


def test_password_step_expires(client, staff_user, totp_device):
    client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    session = client.session
    pending = session[PENDING_KEY]
    pending["at"] = time.time() - PENDING_SECONDS - 1
    session[PENDING_KEY] = pending
    session.save()

    response = client.post(VERIFY, {"code": fresh_code(totp_device)})
    assert location(response) == f"{LOGIN}?next=%2Fadmin%2F"
    assert PENDING_KEY not in client.session
    assert not is_verified_console(client)


def test_password_step_just_inside_the_window_still_counts(client, staff_user, totp_device):
    client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    session = client.session
    pending = session[PENDING_KEY]
    pending["at"] = time.time() - PENDING_SECONDS + 30
    session[PENDING_KEY] = pending
    session.save()
    assert location(client.post(VERIFY, {"code": fresh_code(totp_device)})) == "/admin/"


@pytest.mark.parametrize("revoked", ["is_active", "is_staff"])
def test_account_disabled_between_the_two_steps_is_refused(client, staff_user, totp_device, revoked):
    client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    setattr(staff_user, revoked, False)
    staff_user.save(update_fields=[revoked])
    assert location(client.post(VERIFY, {"code": fresh_code(totp_device)})).startswith(LOGIN)
    assert not events(AuthEventKind.LOGIN)


def test_too_many_wrong_codes_require_the_password_again(client, staff_user, totp_device):
    client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    wrong = code_not_accepted_by(totp_device)
    for _ in range(MAX_CODE_FAILURES - 1):
        response = client.post(VERIFY, {"code": wrong})
        assert response.status_code == 200 and b"That code is not valid" in response.content
        wait_out_throttle(totp_device)
    assert location(client.post(VERIFY, {"code": wrong})) == f"{LOGIN}?next=%2Fadmin%2F"
    assert len(events(AuthEventKind.OTP_FAILED, user=staff_user)) == MAX_CODE_FAILURES

    # The right code no longer helps: the password step has to be repeated.
    wait_out_throttle(totp_device)
    assert location(client.post(VERIFY, {"code": fresh_code(totp_device)})).startswith(LOGIN)
    assert not is_verified_console(client)


def test_a_paused_device_says_how_long_to_wait_and_keeps_counting_fair(client, staff_user, totp_device):
    client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    client.post(VERIFY, {"code": code_not_accepted_by(totp_device)})
    # Right code, but inside django-otp's pause after a failure: told to wait, not "wrong".
    response = client.post(VERIFY, {"code": fresh_code(totp_device)})
    assert b"Too many wrong codes. Wait 1 second and try again." in response.content
    assert len(events(AuthEventKind.OTP_FAILED, user=staff_user)) == 1
    wait_out_throttle(totp_device)
    assert location(client.post(VERIFY, {"code": fresh_code(totp_device)})) == "/admin/"


def test_a_backup_code_does_not_pause_the_authenticator_app(client, staff_user, totp_device):
    give_backup_codes(staff_user, "a1b2c3d4")
    client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    assert location(client.post(VERIFY, {"code": "a1b2c3d4"})) == "/admin/"
    totp_device.refresh_from_db()
    assert totp_device.throttling_failure_count == 0


@pytest.mark.parametrize("evil", ["https://evil.example/", "//evil.example/", "/\\evil.example/", "http:evil.example"])
def test_sign_in_does_not_follow_an_offsite_next(client, staff_user, totp_device, evil):
    # The way a phishing link would arrive: through the admin's own login URL.
    start = client.get("/admin/login/", {"next": evil})
    assert next_of(location(start)) == evil

    response = client.post(
        f"{LOGIN}?{urlsplit(location(start)).query}",
        {"username": staff_user.username, "password": PASSWORD, "next": evil},
    )
    assert next_of(location(response)) == "/admin/"
    response = client.post(VERIFY, {"code": fresh_code(totp_device), "next": evil})
    assert location(response) == "/admin/"
    # Already signed in, the login page must not bounce offsite either.
    assert location(client.get(LOGIN, {"next": evil})) == "/admin/"


def test_sign_in_follows_a_next_inside_the_console(client, staff_user, totp_device):
    page = reverse("admin:bots_bot_changelist")
    response = client.get(page, follow=True)
    assert next_of(response.redirect_chain[-1][0]) == page
    response = client.post(response.redirect_chain[-1][0], {"username": staff_user.username, "password": PASSWORD})
    assert location(response) == f"{VERIFY}?next=%2Fadmin%2Fbots%2Fbot%2F"
    assert location(client.post(location(response), {"code": fresh_code(totp_device)})) == page


# (d) a user who already has a device


def test_enrolled_user_is_sent_to_verify_and_cannot_enroll_again(client, staff_user, totp_device):
    response = client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    assert location(response) == f"{VERIFY}?next=%2Fadmin%2F"
    # Knowing the password must not be enough to register a second phone.
    assert location(client.get(ENROLL)).startswith(VERIFY)
    assert location(client.post(ENROLL, {"code": "123456"})).startswith(VERIFY)
    assert list(AuthenticatorDevice.objects.all()) == [totp_device]


def test_sign_in_records_the_login_with_the_remote_address(staff_user, totp_device):
    client = Client(REMOTE_ADDR="10.20.30.40")
    client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    assert not events(AuthEventKind.LOGIN)
    assert location(client.post(VERIFY, {"code": fresh_code(totp_device)})) == "/admin/"
    [login] = events(AuthEventKind.LOGIN)
    assert login.user == staff_user and login.username == staff_user.username
    assert login.remote_addr == "10.20.30.40"
    assert is_verified_console(client)


# reset_2fa: the way back in after a lost phone


def test_reset_2fa_removes_the_devices_and_sends_the_user_to_enrollment(console, staff_user, django_user_model):
    give_backup_codes(staff_user, "abcd1234")
    other = django_user_model.objects.create_user(username="carol", password=PASSWORD, is_staff=True)
    others_device = AuthenticatorDevice.objects.create(user=other, name="phone", confirmed=True)
    assert is_verified_console(console)

    out = StringIO()
    call_command("reset_2fa", staff_user.username, stdout=out)
    assert "Removed 2 device(s) of alice" in out.getvalue()
    assert not AuthenticatorDevice.objects.filter(user=staff_user).exists()
    assert not BackupCodeDevice.objects.filter(user=staff_user).exists()
    assert not BackupCode.objects.exists()
    assert list(AuthenticatorDevice.objects.all()) == [others_device]
    [reset] = events(AuthEventKind.OTP_RESET)
    assert reset.user == staff_user and reset.detail == "manage.py reset_2fa"

    # The session verified with the lost phone no longer opens the console.
    assert not is_verified_console(console)
    client = Client()
    response = client.post(LOGIN, {"username": staff_user.username, "password": PASSWORD})
    assert location(response).startswith(ENROLL)


def test_reset_2fa_also_drops_a_half_done_enrollment(enrolling, staff_user):
    old_key = manual_key(enrolling.get(ENROLL))
    call_command("reset_2fa", staff_user.username, stdout=StringIO())
    assert not AuthenticatorDevice.objects.exists()
    # The key shown before the reset (maybe on the lost phone) is gone for good.
    assert manual_key(enrolling.get(ENROLL)) != old_key


def test_reset_2fa_without_devices_says_so(staff_user):
    out = StringIO()
    call_command("reset_2fa", staff_user.username, stdout=out)
    assert "alice had no OTP devices" in out.getvalue()


@pytest.mark.django_db
def test_reset_2fa_names_an_unknown_user():
    with pytest.raises(CommandError, match=r"There is no user named 'nobody'"):
        call_command("reset_2fa", "nobody")
