"""Console sign-in: password first, then a TOTP code, or first-time TOTP enrollment.

The password step does not log the user in. It only remembers, for a few minutes, which
account proved its password; the session becomes authenticated and OTP-verified together,
so no request ever runs as a half-signed-in staff user.
"""

from __future__ import annotations

import functools
import math
import time
from base64 import b32encode
from urllib.parse import urlencode

import qrcode
import qrcode.image.svg
from django import forms
from django.contrib import admin, messages
from django.contrib.auth import authenticate, get_user_model, login, logout
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django_otp import devices_for_user, user_has_device, verify_token
from django_otp import login as otp_login
from django_otp.middleware import is_verified as otp_is_verified

from audit.events import record_auth_event
from audit.models import AuthEventKind
from bots import lockout, stepup
from bots.console_security import start_session_clock
from bots.otp_devices import AuthenticatorDevice, BackupCode, BackupCodeDevice

PENDING_KEY = "switchboard_2fa_pending"
PENDING_SECONDS = 600
MAX_CODE_FAILURES = 5
BACKUP_CODE_COUNT = 10

app_name = "twofactor"


class PasswordForm(forms.Form):
    username = forms.CharField(
        max_length=150, widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"})
    )
    password = forms.CharField(strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=16,
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "one-time-code", "inputmode": "numeric"}),
    )

    def clean_code(self) -> str:
        return self.cleaned_data["code"].replace(" ", "").strip()


def _next_url(request: HttpRequest) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse("admin:index")


def _with_next(name: str, request: HttpRequest) -> str:
    return f"{reverse(name)}?{urlencode({'next': _next_url(request)})}"


def _pending_user(request: HttpRequest):
    pending = request.session.get(PENDING_KEY)
    if not pending or time.time() - pending["at"] > PENDING_SECONDS:
        request.session.pop(PENDING_KEY, None)
        return None
    return get_user_model().objects.filter(pk=pending["user_id"], is_active=True, is_staff=True).first()


def _context(request: HttpRequest, **extra) -> dict:
    return {**admin.site.each_context(request), "next": _next_url(request), **extra}


def _finish_login(request: HttpRequest, user, device) -> None:
    backend = request.session[PENDING_KEY]["backend"]
    request.session.pop(PENDING_KEY, None)
    login(request, user, backend=backend)
    otp_login(request, device)
    # django-otp's middleware gives request.user its is_verified() as a request starts;
    # login() has just replaced request.user, and this response is a console page.
    request.user.is_verified = functools.partial(otp_is_verified, request.user)
    start_session_clock(request)
    stepup.mark_fresh(request)
    lockout.clear_failures(user.get_username(), request)


def _wait_message(wait: int) -> str:
    return f"Too many wrong codes. Wait {wait} second{'s' if wait != 1 else ''} and try again."


def _match_code(user, code: str):
    """(the device that accepts this code or None, seconds to wait before trying).

    An app code goes to the app, a backup code to the backup codes: trying one on the
    other would count as a wrong code there and pause that device."""
    kind = AuthenticatorDevice if code.isdigit() and len(code) == 6 else BackupCodeDevice
    devices = [d for d in devices_for_user(user) if isinstance(d, kind)]
    # django-otp pauses a device after a wrong code; a code typed during the pause would
    # be refused whatever it is, so say so instead of calling it wrong.
    wait = _throttle_seconds(devices)
    if wait:
        return None, wait
    return next((d for d in devices if verify_token(user, d.persistent_id, code)), None), 0


def _to_login_locked(request: HttpRequest, lock: lockout.Lock) -> HttpResponse:
    request.session.pop(PENDING_KEY, None)
    messages.error(request, lock.message)
    return redirect(_with_next("twofactor:login", request))


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
def login_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated and request.user.is_verified() and request.user.is_staff:
        return redirect(_next_url(request))
    form = PasswordForm(request.POST or None)
    error = ""
    status = 200
    if request.method == "POST" and form.is_valid():
        username = form.cleaned_data["username"]
        lock = lockout.lock_of(username, request)
        # While locked, the password is not even checked: a right guess must look the same.
        user = None if lock else authenticate(request, username=username, password=form.cleaned_data["password"])
        if lock:
            record_auth_event(AuthEventKind.LOGIN_FAILED, request, username=username, detail="refused: locked out")
            error, status = lock.message, 429
        elif user is None:
            lock = lockout.record_failure(username, request, "password")
            error = lock.message if lock else "That user name and password do not match."
        elif not (user.is_active and user.is_staff):
            record_auth_event(AuthEventKind.LOGIN_FAILED, request, user=user, detail="not a staff account")
            error = "This account has no access to the console."
        else:
            request.session.cycle_key()
            request.session[PENDING_KEY] = {
                "user_id": user.pk,
                "at": time.time(),
                "backend": user.backend,
                "failures": 0,
            }
            if user_has_device(user, confirmed=True):
                return redirect(_with_next("twofactor:verify", request))
            return redirect(_with_next("twofactor:enroll", request))
    return render(
        request, "twofactor/login.html", _context(request, form=form, error=error, title="Sign in"), status=status
    )


def _code_failed(request: HttpRequest, user, detail: str) -> HttpResponse | None:
    """Record a wrong code; a redirect to the password step when this session (or the
    account from this address) has had too many."""
    record_auth_event(AuthEventKind.OTP_FAILED, request, user=user, detail=detail)
    lock = lockout.record_failure(user.get_username(), request, "sign-in code", user=user)
    if lock:
        return _to_login_locked(request, lock)
    pending = request.session[PENDING_KEY]
    pending["failures"] += 1
    request.session[PENDING_KEY] = pending
    if pending["failures"] >= MAX_CODE_FAILURES:
        request.session.pop(PENDING_KEY, None)
        return redirect(_with_next("twofactor:login", request))
    return None


@sensitive_post_parameters("code")
@csrf_protect
@never_cache
def verify_view(request: HttpRequest) -> HttpResponse:
    user = _pending_user(request)
    if user is None:
        return redirect(_with_next("twofactor:login", request))
    lock = lockout.lock_of(user.get_username(), request)
    if lock:
        return _to_login_locked(request, lock)
    if not user_has_device(user, confirmed=True):
        return redirect(_with_next("twofactor:enroll", request))
    form = CodeForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        device, wait = _match_code(user, form.cleaned_data["code"])
        if wait:
            error = _wait_message(wait)
        elif device is not None:
            _finish_login(request, user, device)
            return redirect(_next_url(request))
        else:
            refused = _code_failed(request, user, "wrong code at sign-in")
            if refused:
                return refused
            error = "That code is not valid. Use the current code from your app, or a backup code."
    return render(request, "twofactor/verify.html", _context(request, form=form, error=error, title="Second factor"))


def _throttle_seconds(devices) -> int:
    """Seconds until every one of these devices accepts a code again (0: now)."""
    waits = []
    for device in devices:
        allowed, data = device.verify_is_allowed()
        if not allowed and data and data.get("locked_until"):
            waits.append(math.ceil((data["locked_until"] - timezone.now()).total_seconds()))
    return max([0, *waits])


def _qr_svg(data: str) -> str:
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=4)
    return image.to_string(encoding="unicode")


def _show_backup_codes(request: HttpRequest, codes: list[str] | None) -> HttpResponse:
    """The backup-codes page. New codes go straight into this response, never into the
    session (stored in the database) or anywhere else: they are shown this once."""
    remaining = BackupCode.objects.filter(device__user=request.user).count()
    return render(
        request,
        "twofactor/backup_codes.html",
        _context(request, codes=codes, remaining=remaining, title="Backup codes"),
    )


@sensitive_post_parameters("code")
@csrf_protect
@never_cache
def enroll_view(request: HttpRequest) -> HttpResponse:
    user = _pending_user(request)
    if user is None:
        return redirect(_with_next("twofactor:login", request))
    lock = lockout.lock_of(user.get_username(), request)
    if lock:
        return _to_login_locked(request, lock)
    if user_has_device(user, confirmed=True):
        return redirect(_with_next("twofactor:verify", request))
    # Keep one unconfirmed device, so reloading the page does not change the QR code.
    device = AuthenticatorDevice.objects.filter(user=user, confirmed=False).order_by("id").first()
    if device is None:
        device = AuthenticatorDevice.objects.create(user=user, name="authenticator app", confirmed=False)
    form = CodeForm(request.POST or None)
    error = ""
    wait = _throttle_seconds([device])
    if request.method == "POST" and form.is_valid() and wait:
        error = _wait_message(wait)
    elif request.method == "POST" and form.is_valid():
        # verify_token locks the device row, so two simultaneous posts of one code
        # cannot both confirm it.
        if verify_token(user, device.persistent_id, form.cleaned_data["code"]):
            with transaction.atomic():
                device.refresh_from_db()
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                codes = BackupCodeDevice.issue(user, BACKUP_CODE_COUNT)
            record_auth_event(AuthEventKind.OTP_ENROLLED, request, user=user)
            _finish_login(request, user, device)
            return _show_backup_codes(request, codes)
        refused = _code_failed(request, user, "wrong code at enrollment")
        if refused:
            return refused
        error = "That code does not match. Check the time on your phone and try the next code."
    secret = b32encode(device.bin_key).decode("ascii")
    context = _context(
        request,
        form=form,
        error=error,
        title="Set up two-factor sign-in",
        qr_svg=_qr_svg(device.config_url),
        manual_key=" ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
        username=user.get_username(),
    )
    return render(request, "twofactor/enroll.html", context)


@never_cache
@login_required(login_url="twofactor:login")
def backup_codes_view(request: HttpRequest) -> HttpResponse:
    if not request.user.is_verified():
        return redirect(_with_next("twofactor:login", request))
    if request.method != "POST":
        return _show_backup_codes(request, None)
    # New codes are a second factor for as long as they last: a session whose code is
    # old (perhaps not its owner's any more) must not get to make a set of its own.
    if not stepup.is_fresh(request):
        return stepup.redirect_to_step_up(request, "make new backup codes", back=request.get_full_path())
    codes = BackupCodeDevice.issue(request.user, BACKUP_CODE_COUNT)
    return _show_backup_codes(request, codes)


@sensitive_post_parameters("code")
@csrf_protect
@never_cache
def step_up_view(request: HttpRequest) -> HttpResponse:
    """A fresh code for a sensitive action, then back to it."""
    user = request.user
    if not (user.is_authenticated and user.is_staff and user.is_verified()):
        return redirect(_with_next("twofactor:login", request))
    reason = request.session.get(stepup.REASON_KEY, "continue")
    form = CodeForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        device, wait = _match_code(user, form.cleaned_data["code"])
        if wait:
            error = _wait_message(wait)
        elif device is not None:
            stepup.mark_fresh(request)
            request.session.pop(stepup.REASON_KEY, None)
            record_auth_event(AuthEventKind.STEP_UP, request, user=user, detail=f"to {reason}")
            messages.success(
                request,
                f"Confirmed. For the next {stepup.FRESH_SECONDS // 60} minutes you can {reason} "
                "and do other sensitive actions without another code.",
            )
            return redirect(_next_url(request))
        else:
            record_auth_event(AuthEventKind.STEP_UP_FAILED, request, user=user, detail=f"to {reason}")
            lock = lockout.record_failure(user.get_username(), request, "step-up code", user=user)
            if lock:
                # A stolen session must not get to guess on: it ends here.
                logout(request)
                return _to_login_locked(request, lock)
            error = "That code is not valid. Use the current code from your app, or a backup code."
    context = _context(request, form=form, error=error, reason=reason, title="Confirm it is you")
    return render(request, "twofactor/step_up.html", context)


urlpatterns = [
    path("login/", login_view, name="login"),
    path("verify/", verify_view, name="verify"),
    path("enroll/", enroll_view, name="enroll"),
    path("backup-codes/", backup_codes_view, name="backup_codes"),
    path("step-up/", step_up_view, name="step_up"),
]
