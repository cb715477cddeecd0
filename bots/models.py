from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from bots.fields import EncryptedTextField
from bots.otp_devices import AuthenticatorDevice, BackupCode, BackupCodeDevice  # noqa: F401 (this app's models too)
from bots.platforms import WXBIZMSGCRYPT_PLATFORMS, Platform, required_credentials, validate_extra
from bots.validators import validate_cidr, validate_cidr_list, validate_encoding_aes_key


class Bot(models.Model):
    """One bot app on one platform: its credentials and how it answers."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    platform = models.CharField(max_length=20, choices=Platform.choices)
    enabled = models.BooleanField(default=True)

    app_id = models.CharField(
        "App ID",
        max_length=200,
        blank=True,
        help_text="AppID / CorpID / AppKey / client id, as the platform calls it.",
    )
    app_secret = EncryptedTextField(help_text="AppSecret / CorpSecret / signing secret.")
    token = EncryptedTextField(help_text="Callback token / verification token / bot token.")
    encoding_aes_key = EncryptedTextField(
        "EncodingAESKey", help_text="EncodingAESKey (WeCom, WeChat) or Encrypt Key (Feishu)."
    )
    api_base_url = models.URLField(
        "API base URL",
        blank=True,
        help_text="Override the platform's API host (e.g. https://open.larksuite.com for Lark).",
    )
    extra = models.JSONField(default=dict, blank=True, help_text="Platform-specific settings.")
    allowed_ips = models.JSONField(
        "source IP allowlist",
        default=list,
        blank=True,
        validators=[validate_cidr_list],
        help_text="CIDRs the platform calls from; empty allows any source.",
    )
    rate_limit_qps = models.FloatField("rate limit (messages/s)", default=10.0, validators=[MinValueValidator(0.1)])
    system_prompt = models.TextField(blank=True)
    default_backend = models.ForeignKey(
        "routing.ModelBackend",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="default_for_bots",
    )
    context_ttl = models.PositiveIntegerField("context TTL (s)", default=1800, validators=[MinValueValidator(1)])
    max_context_turns = models.PositiveIntegerField(default=10, validators=[MinValueValidator(0)])
    require_mention_in_groups = models.BooleanField(
        default=True, help_text="In group chats, answer only when the bot is @mentioned."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        problems: dict[str, list[str]] = {}
        try:
            validate_extra(self.platform, self.extra)
        except ValidationError as exc:
            problems.update(exc.message_dict)
        key = str(self.encoding_aes_key or "")
        # Blank is allowed here: an imported bot gets its secrets later (the console
        # form requires the ones its platform needs).
        if key and self.platform in WXBIZMSGCRYPT_PLATFORMS:
            try:
                validate_encoding_aes_key(key)
            except ValidationError as exc:
                problems["encoding_aes_key"] = exc.messages
        if problems:
            raise ValidationError(problems)

    def missing_credentials(self) -> list[str]:
        """The credential fields this bot's platform needs that are empty (not a validation
        error: a bot is created before the platform hands out some of them)."""
        return [name for name in required_credentials(self.platform, self.extra) if not str(getattr(self, name) or "")]

    @property
    def callback_path(self) -> str:
        return f"/callback/{self.platform}/{self.uuid}/"


class ApiKeyScope(models.TextChoices):
    CHAT = "chat", "chat: call the dialog API"
    AUDIT_READ = "audit:read", "audit:read: export the audit log"


def default_api_key_expiry():
    return timezone.now() + timedelta(days=90)


class ApiKey(models.Model):
    """A key for the HTTP API. Only a hash is stored; the key is shown once, at creation."""

    PREFIX_LENGTH = 8

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list, blank=True)
    allowed_cidrs = models.JSONField(default=list, blank=True, validators=[validate_cidr_list])
    expires_at = models.DateTimeField(default=default_api_key_expiry)
    revoked = models.BooleanField(default=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    marked_expired_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="when the daily check found this key expired (and logged it, once)",
    )
    replaced_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        help_text="the key that took over when this one was rotated",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash_key(key: str) -> str:
        # The key carries 256 random bits, so a plain digest is enough: there is nothing
        # for a slow password hash to protect against.
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    def assign_new_key(self) -> str:
        """Give this (unsaved) row a fresh key; return the only copy of it in clear."""
        self.prefix = secrets.token_hex(self.PREFIX_LENGTH // 2)
        key = f"sb_{self.prefix}_{secrets.token_urlsafe(32)}"
        self.key_hash = self.hash_key(key)
        return key

    @classmethod
    def issue(cls, **fields) -> tuple[ApiKey, str]:
        """Create a key; return the row and the only copy of the key in clear."""
        row = cls(**fields)
        key = row.assign_new_key()
        row.save()
        return row, key

    @classmethod
    def find(cls, key: str) -> ApiKey | None:
        """The row a presented key belongs to, whatever its state (the caller checks
        is_active, scopes and CIDRs, so it can say which check failed)."""
        parts = key.split("_")
        if len(parts) < 3 or parts[0] != "sb":
            return None
        row = cls.objects.filter(prefix=parts[1]).first()
        if row is None or not hmac.compare_digest(row.key_hash, cls.hash_key(key)):
            return None
        return row

    def is_active(self, at=None) -> bool:
        return not self.revoked and self.expires_at > (at or timezone.now())

    def rotate(self, grace: timedelta = timedelta(hours=24)) -> tuple[ApiKey, str]:
        """Issue the successor of this key; this one keeps working for `grace`, so
        clients can switch over without an outage."""
        new, key = ApiKey.issue(
            name=self.name,
            scopes=list(self.scopes),
            allowed_cidrs=list(self.allowed_cidrs),
        )
        self.expires_at = min(self.expires_at, timezone.now() + grace)
        self.replaced_by = new
        self.save(update_fields=["expires_at", "replaced_by"])
        return new, key

    def revoke(self) -> None:
        self.revoked = True
        self.save(update_fields=["revoked"])

    def clean(self) -> None:
        if not isinstance(self.scopes, list) or not self.scopes:
            # Every endpoint needs a scope: a key without one would be "active" yet refused
            # on every call. No default scope either: what a key may do is chosen, not assumed.
            raise ValidationError({"scopes": "Choose at least one scope: a key without one is refused on every call."})
        unknown = [s for s in self.scopes if s not in ApiKeyScope.values]
        if unknown:
            raise ValidationError({"scopes": f"unknown scopes: {', '.join(map(str, unknown))}."})


class AdminAccessRule(models.Model):
    """A network allowed to reach the console, in addition to ADMIN_ALLOWED_CIDRS."""

    cidr = models.CharField("CIDR", max_length=50, validators=[validate_cidr])
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cidr"]

    def __str__(self) -> str:
        return self.cidr
