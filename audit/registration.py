"""Which models django-auditlog tracks, and which of their fields it must never show."""

from auditlog.registry import auditlog
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from bots.models import AdminAccessRule, ApiKey, Bot
from routing.models import ModelBackend, RoutingRule

auditlog.register(Bot, mask_fields=["app_secret", "token", "encoding_aes_key"])
auditlog.register(ModelBackend, mask_fields=["api_key"])
auditlog.register(RoutingRule)
auditlog.register(ApiKey, mask_fields=["key_hash"], exclude_fields=["last_used_at", "last_used_ip"])
auditlog.register(AdminAccessRule)
auditlog.register(get_user_model(), mask_fields=["password"], exclude_fields=["last_login"])
auditlog.register(Group, m2m_fields={"permissions"})
# Device counters and throttling fields change on every sign-in; they are not config.
auditlog.register(
    TOTPDevice, mask_fields=["key"],
    exclude_fields=["last_t", "throttling_failure_timestamp", "throttling_failure_count", "last_used_at"],
)
auditlog.register(
    StaticDevice,
    exclude_fields=["throttling_failure_timestamp", "throttling_failure_count", "last_used_at"],
)
auditlog.register(StaticToken, mask_fields=["token"])
