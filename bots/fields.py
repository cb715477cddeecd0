from __future__ import annotations

from django.db import models

from bots import encryption


class EncryptedTextField(models.TextField):
    """A text column whose value is AES-256-GCM ciphertext in the database.

    Python code sees a `Secret` (a str that hides itself in reprs); the empty string is
    stored as is, so "not configured" stays queryable.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("blank", True)
        kwargs.setdefault("default", "")
        super().__init__(*args, **kwargs)

    @property
    def encryption_context(self) -> str:
        return f"{self.model._meta.label}.{self.name}"

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return encryption.Secret(value or "")
        return encryption.Secret(encryption.decrypt(value, self.encryption_context))

    def to_python(self, value):
        if value is None or isinstance(value, encryption.Secret):
            return value
        return encryption.Secret(str(value))

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encryption.encrypt(str(value), self.encryption_context)
