from __future__ import annotations

from django.conf import settings
from django.db import models


class AuthEventKind(models.TextChoices):
    LOGIN = "login", "login"
    LOGIN_FAILED = "login_failed", "failed login"
    LOGOUT = "logout", "logout"
    OTP_FAILED = "otp_failed", "failed second factor"
    OTP_ENROLLED = "otp_enrolled", "second factor enrolled"
    OTP_RESET = "otp_reset", "second factor reset by an operator"
    ADMIN_IP_DENIED = "admin_ip_denied", "console refused for IP"
    LOCKED_OUT = "locked_out", "locked out after repeated failures"
    STEP_UP = "step_up", "fresh second factor for a sensitive action"
    STEP_UP_FAILED = "step_up_failed", "failed second factor for a sensitive action"
    SECRET_REVEALED = "secret_revealed", "secret revealed in the console"
    API_KEY_REFUSED = "api_key_refused", "API request refused"
    AUDIT_EXPORTED = "audit_exported", "audit log exported"


class AuthEvent(models.Model):
    """Sign-in activity, kept beside django-auditlog's record of config changes."""

    kind = models.CharField(max_length=20, choices=AuthEventKind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    detail = models.CharField(max_length=300, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at"]
        verbose_name = "sign-in event"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind} {self.username}"
