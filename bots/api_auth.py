"""The HTTP API's front door: `Authorization: Api-Key <key>`, scopes, per-key throttling
and one JSON shape for every error: `{"error": {"code": "...", "message": "..."}}`.

Every refusal is logged, counted and recorded as an API_KEY_REFUSED sign-in event, but
the recording is rate-limited in Redis: a script hammering the API with bad keys must
not be able to fill the audit table (the log line and the metric still see each one).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from prometheus_client import Counter
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from audit.events import record_auth_event
from audit.models import AuthEventKind
from bots.models import ApiKey
from bots.validators import ip_in_cidrs
from config.clientip import IPAddress, client_ip

logger = logging.getLogger("switchboard.api")

KEYWORD = "Api-Key"
#: last_used_at/ip are written at most this often per key, not on every request
LAST_USED_RESOLUTION = timedelta(minutes=1)
#: one recorded refusal per reason and key (or client address) per window
REFUSAL_EVENT_WINDOW = 60
#: and at most this many recorded refusals per minute that no known key is behind,
#: however many addresses they come from (an IPv6 /64 is a lot of addresses)
UNATTRIBUTED_EVENTS_PER_MINUTE = 100

REFUSALS = Counter("switchboard_api_refusals_total", "API requests refused before the view ran", ["reason"])


class Refusal(StrEnum):
    """Why a request was refused; the value is the `code` in the JSON error."""

    MISSING = "missing_credentials"
    MALFORMED = "malformed_credentials"
    UNKNOWN = "unknown_key"
    REVOKED = "key_revoked"
    EXPIRED = "key_expired"
    IP_NOT_ALLOWED = "ip_not_allowed"
    MISSING_SCOPE = "missing_scope"

    @property
    def status(self) -> int:
        # 401: the credentials are not valid; 403: they are, but not for this.
        return 403 if self in (Refusal.IP_NOT_ALLOWED, Refusal.MISSING_SCOPE) else 401


@dataclass(frozen=True)
class ApiClient:
    """Who is calling, as DRF's `request.user`: an API key, not a console user."""

    key: ApiKey
    is_authenticated = True
    is_anonymous = False

    def get_username(self) -> str:
        return f"api key {self.key.prefix} ({self.key.name})"[:150]


def _claimed_prefix(presented: str) -> str:
    """The prefix part of a presented key, only if it looks like one: it is the caller's
    text, and it goes into the audit log."""
    parts = presented.split("_")
    if len(parts) >= 3 and re.fullmatch(r"[0-9a-f]{1,16}", parts[1]):
        return parts[1]
    return ""


def _should_record(reason: Refusal, subject: str, attributed: bool) -> bool:
    if not cache.add(f"api-refused:{reason}:{subject}", 1, timeout=REFUSAL_EVENT_WINDOW):
        return False
    if attributed:
        return True
    # A window that opens with its first refusal and closes a minute later.
    bucket = "api-refused:unattributed"
    cache.add(bucket, 0, timeout=60)
    try:
        return cache.incr(bucket) <= UNATTRIBUTED_EVENTS_PER_MINUTE
    except ValueError:  # the window closed between add and incr: a new one opens
        return cache.add(bucket, 1, timeout=60)


def refuse(
    request: HttpRequest, reason: Refusal, message: str, key: ApiKey | None = None, prefix: str = ""
) -> exceptions.APIException:
    """Log, count and (rate-limited) record a refusal; return the exception to raise.
    Never given the key itself: only its prefix, which is not secret."""
    address = client_ip(request)
    who = ApiClient(key).get_username() if key is not None else f"api key {prefix or '-'}"
    detail = f"{reason.value}: {who}; {request.method} {request.path}"
    REFUSALS.labels(reason.value).inc()
    logger.warning("API request refused from %s: %s", address, detail)
    subject = key.prefix if key is not None else str(address)
    if _should_record(reason, subject, attributed=key is not None):
        record_auth_event(AuthEventKind.API_KEY_REFUSED, request, username=who, detail=detail)
    if reason.status == 401:
        return exceptions.AuthenticationFailed(detail=message, code=reason.value)
    return exceptions.PermissionDenied(detail=message, code=reason.value)


def _note_use(key: ApiKey, address: IPAddress | None) -> None:
    now = timezone.now()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    # A queryset update: no model signals, so no audit entry for every minute of use.
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now, last_used_ip=str(address) if address else None)


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <key>`: a known, unrevoked, unexpired key used from one
    of its allowed networks. Scopes are checked per view by HasRequiredScope."""

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiKey]:
        django_request = request._request
        header = django_request.META.get("HTTP_AUTHORIZATION", "")
        if not header.strip():
            raise refuse(
                django_request, Refusal.MISSING, f"no API key: send the header `Authorization: {KEYWORD} <key>`"
            )
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != KEYWORD.lower():
            scheme = parts[0] if parts else ""
            raise refuse(
                django_request,
                Refusal.MALFORMED,
                f"the Authorization header must be `{KEYWORD} <key>` (got a {scheme[:20]!r} header); "
                "the key goes after the word Api-Key and one space",
            )
        presented = parts[1]
        key = ApiKey.find(presented)
        if key is None:
            raise refuse(
                django_request,
                Refusal.UNKNOWN,
                "unknown API key: check that the whole key was copied (it is shown only once, when it is created)",
                prefix=_claimed_prefix(presented),
            )
        now = timezone.now()
        if key.revoked:
            raise refuse(
                django_request, Refusal.REVOKED, "this API key was revoked; ask an administrator for a new one", key=key
            )
        if not key.is_active(at=now):
            ended = f"{key.expires_at:%Y-%m-%d %H:%M} UTC"
            message = (
                f"this API key was rotated and its grace period ended at {ended}; use the key that replaced it"
                if key.replaced_by_id
                else f"this API key expired at {ended}; ask an administrator to rotate it"
            )
            raise refuse(django_request, Refusal.EXPIRED, message, key=key)
        address = client_ip(django_request)
        if key.allowed_cidrs and (address is None or not ip_in_cidrs(address, key.allowed_cidrs)):
            raise refuse(
                django_request,
                Refusal.IP_NOT_ALLOWED,
                f"this API key may not be used from {address or 'an unknown address'}; an administrator can add "
                "the address to the key's allowed networks",
                key=key,
            )
        _note_use(key, address)
        return ApiClient(key), key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to bad credentials, with this challenge.
        return f'{KEYWORD} realm="api"'


class HasRequiredScope(BasePermission):
    """The key must carry the view's `required_scope`."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        scope = view.required_scope
        key = request.auth
        if not isinstance(key, ApiKey):  # authentication refuses first; this is a backstop
            return False
        if scope not in key.scopes:
            held = ", ".join(key.scopes) or "none"
            raise refuse(
                request._request,
                Refusal.MISSING_SCOPE,
                f"this API key lacks the `{scope}` scope needed here (its scopes: {held}); "
                "an administrator can issue a key with it",
                key=key,
            )
        return True


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Per key, wherever it calls from. The rate is read per request (CHAT_API_RATE)."""

    scope = "chat"

    def get_rate(self) -> str:
        return settings.CHAT_API_RATE

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if not isinstance(request.auth, ApiKey):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.pk}


class JsonErrorsNegotiation(DefaultContentNegotiation):
    """Always the view's first renderer: errors are JSON whatever Accept says, and
    `?format=` is the audit export's own parameter, not DRF's renderer switch."""

    def select_renderer(self, request: Request, renderers: list, format_suffix: str | None = None):
        return renderers[0], renderers[0].media_type


class BodyTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "too_large"


class ApiView(APIView):
    """Base of every API view: API key authentication and the scope in `required_scope`."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasRequiredScope]
    content_negotiation_class = JsonErrorsNegotiation
    required_scope: str


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{field}: {_flatten(value)}" for field, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, WWW-Authenticate, Retry-After), with our error shape:
    `{"error": {"code", "message"}}`, plus `fields` for a body that failed validation."""
    if isinstance(exc, RequestDataTooBig):
        # Django's own answer would be its HTML 400 page.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        logger.warning(
            "API request refused: body over %s bytes; %s %s", limit, context["request"].method, context["request"].path
        )
        exc = BodyTooLarge(f"the body is larger than {limit} bytes (CALLBACK_MAX_BODY_BYTES), the most this API reads")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        error = {
            "code": "invalid_request",
            "message": f"the request is not valid: {_flatten(exc.detail)}",
            "fields": exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail},
        }
    else:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        error = {
            "code": codes if isinstance(codes, str) else "error",
            "message": _flatten(response.data.get("detail", response.data)),
        }
    response.data = {"error": error}
    return response


class ApiErrorBody(serializers.Serializer):
    code = serializers.CharField(help_text="stable, machine-readable, e.g. key_expired, invalid_request, throttled")
    message = serializers.CharField(help_text="what went wrong and what to do about it, for a person")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="for invalid_request: the problems of each field of the body",
    )


class ApiError(serializers.Serializer):
    """The body of every error response (for the OpenAPI schema)."""

    error = ApiErrorBody()


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": f"`{KEYWORD} <key>`, e.g. `Authorization: {KEYWORD} sb_1a2b3c4d_…`. Keys are issued in "
            "the console with scopes (`chat`, `audit:read`), optional allowed networks and an expiry.",
        }
