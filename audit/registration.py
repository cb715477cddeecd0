"""Which models django-auditlog tracks, and which of their fields it must never show."""

from auditlog.registry import auditlog
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from bots.models import AdminAccessRule, ApiKey, AuthenticatorDevice, BackupCode, BackupCodeDevice, Bot
from routing.models import ModelBackend, RoutingRule

auditlog.register(Bot, mask_fields=["app_secret", "token", "encoding_aes_key"])
auditlog.register(ModelBackend, mask_fields=["api_key"])
auditlog.register(RoutingRule)
auditlog.register(ApiKey, mask_fields=["key_hash"], exclude_fields=["last_used_at", "last_used_ip"])
auditlog.register(AdminAccessRule)
auditlog.register(get_user_model(), mask_fields=["password"], exclude_fields=["last_login"])
auditlog.register(Group, m2m_fields={"permissions"})
# Device counters and throttling fields change on every sign-in; they are not config.
# A seed, a code-hash key or a code's hash shows only as "********" (audit.masking).
SIGN_IN_STATE = ["throttling_failure_timestamp", "throttling_failure_count", "last_used_at"]
auditlog.register(AuthenticatorDevice, mask_fields=["key"], exclude_fields=["last_t", "drift", *SIGN_IN_STATE])
auditlog.register(BackupCodeDevice, mask_fields=["hmac_key"], exclude_fields=SIGN_IN_STATE)
# A code's deletion is a record that it was used (or replaced by a new set).
auditlog.register(BackupCode, mask_fields=["digest"])
