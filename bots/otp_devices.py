"""The console's second factors, as django-otp devices whose secrets are not readable in
the database.

django-otp's own plugins keep a TOTP seed as a hex column and backup codes ("static
tokens") as plain text looked up by equality, and offer no hook to store them otherwise.
Its documented extension point is a device model of one's own (a subclass of
`django_otp.models.Device`); django-otp then finds it like its own plugins
(`devices_for_user`, `verify_token`, the OTP middleware, throttling). These two are
that: the seed is an `EncryptedTextField` under the key ring (so `rotate_secret_keys`
re-encrypts it), and a backup code is kept only as a keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from base64 import b32encode
from binascii import unhexlify
from urllib.parse import quote, urlencode

from django.conf import settings
from django.db import models, transaction
from django_otp.models import Device, ThrottlingMixin, TimestampMixin
from django_otp.oath import TOTP
from django_otp.util import random_hex

from bots.fields import EncryptedTextField

SEED_BYTES = 20  # 160 bits, the HMAC-SHA1 block RFC 4226 recommends
BACKUP_CODE_BYTES = 4  # 8 hex characters: short enough to type from paper
THROTTLE_FIELDS = ["throttling_failure_timestamp", "throttling_failure_count"]


def new_seed() -> str:
    return random_hex(SEED_BYTES)


def new_hmac_key() -> str:
    return secrets.token_hex(32)


def normalize_backup_code(code: str) -> str:
    """The form a code is hashed in: what a person may type differently (case, spaces,
    a dash between the halves) must not make a right code wrong."""
    return "".join(code.split()).replace("-", "").lower()


def backup_code_digest(hmac_key: str, code: str) -> str:
    """HMAC-SHA256 of a backup code under its device's own key.

    Why a keyed hash and not a salted slow one: a code has only 32 bits, so any hash
    anyone can compute (even PBKDF2 with a salt) is searched through offline from a
    database dump in hours. This key is itself encrypted under SWITCHBOARD_SECRET_KEYS,
    which never is in the database: a dump alone leaves nothing to search, and with the
    key ring a thief can decrypt the seed beside it anyway. Being deterministic, the
    digest is also found with one indexed query instead of a slow hash per stored code.
    """
    message = normalize_backup_code(code).encode("utf-8")
    return hmac.new(bytes.fromhex(hmac_key), message, hashlib.sha256).hexdigest()


class AuthenticatorDevice(TimestampMixin, ThrottlingMixin, Device):
    """An authenticator app (TOTP, RFC 6238) with its seed encrypted at rest.

    The fields other than the seed mean what they mean on django-otp's TOTPDevice.
    """

    key = EncryptedTextField(default=new_seed, help_text="The hex-encoded seed, encrypted under the key ring.")
    step = models.PositiveSmallIntegerField(default=30, help_text="The time step in seconds.")
    t0 = models.BigIntegerField(default=0, help_text="The Unix time at which to begin counting steps.")
    digits = models.PositiveSmallIntegerField(choices=[(6, 6), (8, 8)], default=6)
    tolerance = models.PositiveSmallIntegerField(
        default=1, help_text="How many time steps before or after now a code may be from."
    )
    drift = models.SmallIntegerField(default=0, help_text="Time steps the phone's clock is known to be off.")
    last_t = models.BigIntegerField(
        default=-1, help_text="The time step of the last accepted code: a code is accepted once."
    )

    class Meta(Device.Meta):
        verbose_name = "authenticator app"

    @property
    def bin_key(self) -> bytes:
        return unhexlify(str(self.key).encode("ascii"))

    def get_throttle_factor(self) -> int:
        return getattr(settings, "OTP_TOTP_THROTTLE_FACTOR", 1)

    def verify_token(self, token) -> bool:
        """Accept a code of the current step (give or take `tolerance`) newer than the last
        accepted one; every wrong code pauses the device a little longer (ThrottlingMixin)."""
        if not self.verify_is_allowed()[0]:
            return False
        try:
            number = int(token)
        except (TypeError, ValueError):
            number = None
        totp = TOTP(self.bin_key, self.step, self.t0, self.digits, self.drift)
        totp.time = time.time()
        if number is not None and totp.verify(number, self.tolerance, self.last_t + 1):
            self.last_t = totp.t()
            self.drift = totp.drift
            self.throttle_reset(commit=False)
            self.set_last_used_timestamp(commit=False)
            self.save(update_fields=["last_t", "drift", *THROTTLE_FIELDS, "last_used_at"])
            return True
        self.throttle_increment(commit=False)
        self.save(update_fields=THROTTLE_FIELDS)
        return False

    @property
    def config_url(self) -> str:
        """The otpauth:// URL an authenticator app reads from the QR code (Google's Key
        Uri Format), labelled with OTP_TOTP_ISSUER."""
        issuer = str(getattr(settings, "OTP_TOTP_ISSUER", "") or "").replace(":", "")
        label = self.user.get_username()
        params = {
            "secret": b32encode(self.bin_key).decode("ascii"),
            "algorithm": "SHA1",
            "digits": self.digits,
            "period": self.step,
        }
        if issuer:
            label = f"{issuer}:{label}"
            params["issuer"] = issuer
        return f"otpauth://totp/{quote(label)}?{urlencode(params, quote_via=quote)}"


class BackupCodeDevice(TimestampMixin, ThrottlingMixin, Device):
    """A user's set of one-time backup codes. Only their keyed hashes are stored
    (backup_code_digest); the codes exist in clear once, on the page that issues them."""

    hmac_key = EncryptedTextField(default=new_hmac_key, help_text="The key of this set's code hashes, encrypted.")

    class Meta(Device.Meta):
        verbose_name = "backup code set"

    def get_throttle_factor(self) -> int:
        return getattr(settings, "OTP_STATIC_THROTTLE_FACTOR", 1)

    def verify_token(self, token) -> bool:
        """Accept an unused code and use it up. The DELETE is the test: of two requests
        with the same code only one deletes the row."""
        if not self.verify_is_allowed()[0]:
            return False
        used, _ = self.codes.filter(digest=backup_code_digest(self.hmac_key, str(token))).delete()
        if used:
            self.throttle_reset(commit=False)
            self.set_last_used_timestamp(commit=False)
            self.save(update_fields=[*THROTTLE_FIELDS, "last_used_at"])
        else:
            self.throttle_increment(commit=False)
            self.save(update_fields=THROTTLE_FIELDS)
        return bool(used)

    def add_codes(self, codes: list[str]) -> None:
        BackupCode.objects.bulk_create(
            [BackupCode(device=self, digest=backup_code_digest(self.hmac_key, code)) for code in codes]
        )

    @classmethod
    def issue(cls, user, count: int) -> list[str]:
        """A new set of `count` codes for this user, replacing the old set (under a new
        hash key too, so nothing of the old set lingers). Returns the codes: the only
        time they are readable."""
        codes = [secrets.token_hex(BACKUP_CODE_BYTES) for _ in range(count)]
        with transaction.atomic():
            # The same device, not a new one: a session signed in with a backup code
            # stays verified (django-otp keeps the device's id in the session).
            device = cls.objects.select_for_update().filter(user=user).order_by("id").first()
            if device is None:
                device = cls.objects.create(user=user, name="backup codes")
            else:
                cls.objects.filter(user=user).exclude(pk=device.pk).delete()
                device.codes.all().delete()
                device.hmac_key = new_hmac_key()
                device.save(update_fields=["hmac_key"])
            device.add_codes(codes)
        return codes


class BackupCode(models.Model):
    """One unused backup code, as its keyed hash."""

    device = models.ForeignKey(BackupCodeDevice, related_name="codes", on_delete=models.CASCADE)
    digest = models.CharField(max_length=64, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "digest"], name="backup_code_once_per_set")]

    def __str__(self) -> str:
        return f"backup code of {self.device.user}"
