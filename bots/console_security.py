"""Browser-side hardening of the console: a Content-Security-Policy on every /admin/
response, and sign-out after a while without activity (and after SESSION_COOKIE_AGE
in any case)."""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

CONSOLE_PREFIX = "/admin/"
# Django's admin (5.x) runs no inline script: its scripts are files, and its page data
# sits in data attributes and JSON blocks, so scripts can be 'self' only. Inline styles
# stay allowed: our sign-in pages and the QR code's inline SVG use them.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
LAST_SEEN_KEY = "switchboard_last_seen"
SIGNED_IN_AT_KEY = "switchboard_signed_in_at"
# Writing the session on every click would cost a database write per request; a
# minute of slack on the idle timeout does not matter.
LAST_SEEN_RESOLUTION = 60


def start_session_clock(request: HttpRequest) -> None:
    """Called at sign-in: both timeouts count from now."""
    request.session[SIGNED_IN_AT_KEY] = request.session[LAST_SEEN_KEY] = time.time()


class ConsoleContentSecurityPolicyMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith(CONSOLE_PREFIX):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class ConsoleIdleTimeoutMiddleware:
    """Sign a console user out after SESSION_IDLE_TIMEOUT seconds without a request, and
    SESSION_COOKIE_AGE seconds after signing in however busy (refreshing the session's
    activity time would otherwise extend the session's own expiry for ever)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(CONSOLE_PREFIX) and request.user.is_authenticated:
            expired = self._expired(request)
            if expired:
                logout(request)
                messages.info(request, expired)
                # Straight to the sign-in page: no view behind this runs for a signed-out user.
                return redirect_to_login(request.get_full_path(), reverse(settings.LOGIN_URL))
        return self.get_response(request)

    @staticmethod
    def _expired(request: HttpRequest) -> str:
        """Why this session must end now ("" if it may go on); notes the activity."""
        now = time.time()
        session = request.session
        signed_in_at = session.setdefault(SIGNED_IN_AT_KEY, now)
        last_seen = session.get(LAST_SEEN_KEY, now)
        if now - last_seen > settings.SESSION_IDLE_TIMEOUT:
            minutes = settings.SESSION_IDLE_TIMEOUT // 60
            return f"You were signed out after {minutes} minutes without activity. Sign in again."
        if now - signed_in_at > settings.SESSION_COOKIE_AGE:
            return f"Your sign-in expired after {settings.SESSION_COOKIE_AGE / 3600:g} hours. Sign in again."
        if now - last_seen >= LAST_SEEN_RESOLUTION or LAST_SEEN_KEY not in session:
            session[LAST_SEEN_KEY] = now
        return ""
