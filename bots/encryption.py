"""AES-256-GCM encryption of stored secrets under a key ring.

SWITCHBOARD_SECRET_KEYS is a comma-separated list of base64 32-byte keys. The first key
encrypts; every key decrypts, so an operator can add a new key in front, run
`manage.py rotate_secret_keys`, and only then drop the old one.

Stored form: ``sb1$<key id>$<base64(nonce || ciphertext || tag)>``. The key id is a short
fingerprint of the key, so rotation can tell which rows still use an old key without
trying to decrypt them. The associated data binds each value to its model and field, so
a ciphertext copied into another column does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PREFIX = "sb1"
NONCE_BYTES = 12


class SecretDecryptionError(Exception):
    """A stored secret cannot be decrypted with any key in the ring."""


class Secret(str):
    """A decrypted secret. Behaves as the plain string, but never shows itself in a repr,
    so it stays out of tracebacks, debug pages and log lines that format objects."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('********')" if self else "Secret('')"


@dataclass(frozen=True)
class Key:
    key_id: str
    aead: AESGCM


def _key_id(raw: bytes) -> str:
    return hashlib.sha256(b"switchboard-key-id:" + raw).hexdigest()[:10]


@lru_cache(maxsize=4)
def _parse_ring(spec: str) -> tuple[Key, ...]:
    keys = []
    for position, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        try:
            raw = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ImproperlyConfigured(
                f"SWITCHBOARD_SECRET_KEYS entry {position + 1} is not a base64-encoded "
                '32-byte key. Make one with: python3 -c "import base64,os;'
                'print(base64.b64encode(os.urandom(32)).decode())"'
            )
        keys.append(Key(_key_id(raw), AESGCM(raw)))
    if not keys:
        raise ImproperlyConfigured("SWITCHBOARD_SECRET_KEYS holds no key.")
    return tuple(keys)


def key_ring() -> tuple[Key, ...]:
    return _parse_ring(settings.SWITCHBOARD_SECRET_KEYS)


def primary_key_id() -> str:
    return key_ring()[0].key_id


def encrypt(plaintext: str, context: str) -> str:
    key = key_ring()[0]
    nonce = os.urandom(NONCE_BYTES)
    sealed = key.aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
    return f"{PREFIX}${key.key_id}${base64.b64encode(nonce + sealed).decode('ascii')}"


def key_id_of(stored: str) -> str | None:
    parts = stored.split("$")
    if len(parts) == 3 and parts[0] == PREFIX:
        return parts[1]
    return None


def decrypt(stored: str, context: str) -> str:
    parts = stored.split("$")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise SecretDecryptionError(f"{context}: stored value is not in the sb1 format.")
    _, key_id, body = parts
    key = next((k for k in key_ring() if k.key_id == key_id), None)
    if key is None:
        raise SecretDecryptionError(f"{context}: encrypted with key {key_id}, which is not in SWITCHBOARD_SECRET_KEYS.")
    try:
        blob = base64.b64decode(body, validate=True)
        plain = key.aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode("utf-8"))
    except (binascii.Error, ValueError, InvalidTag):
        raise SecretDecryptionError(f"{context}: ciphertext is damaged or was moved.") from None
    return plain.decode("utf-8")
