"""Feishu's event encryption and request signature.

Encryption (only when the app has an Encrypt Key): the body is ``{"encrypt": "<base64>"}``
where the base64 holds a 16-byte IV followed by AES-256-CBC ciphertext with PKCS#7
padding; the AES key is sha256(encrypt_key). The signature is a plain SHA-256 (not an
HMAC) in hex over timestamp + nonce + encrypt_key + the raw, still-encrypted body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK_BYTES = 16


class DecryptError(ValueError):
    """The `encrypt` field could not be turned back into text with this Encrypt Key."""


def _aes_key(encrypt_key: str) -> bytes:
    return hashlib.sha256(encrypt_key.encode("utf-8")).digest()


def decrypt(encrypted: object, encrypt_key: str) -> str:
    """The plaintext of an `encrypt` field; DecryptError on any failure."""
    if not isinstance(encrypted, str):
        raise DecryptError("the encrypt field is not a string")
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptError("the encrypt field is not valid base64") from exc
    if len(raw) < 2 * BLOCK_BYTES or len(raw) % BLOCK_BYTES:
        raise DecryptError(
            f"the ciphertext is {len(raw)} bytes, not a 16-byte IV plus whole 16-byte blocks (truncated?)"
        )
    decryptor = Cipher(algorithms.AES(_aes_key(encrypt_key)), modes.CBC(raw[:BLOCK_BYTES])).decryptor()
    padded = decryptor.update(raw[BLOCK_BYTES:]) + decryptor.finalize()
    unpadder = padding.PKCS7(BLOCK_BYTES * 8).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        # CBC has no integrity check: a wrong key shows up as garbage padding.
        raise DecryptError("the padding is invalid: the Encrypt Key is probably wrong") from exc
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecryptError("the plaintext is not UTF-8: the Encrypt Key is probably wrong") from exc


def encrypt(plaintext: str, encrypt_key: str, iv: bytes | None = None) -> str:
    """What Feishu puts in the `encrypt` field (used by the fake platform and tests)."""
    iv = os.urandom(BLOCK_BYTES) if iv is None else iv
    padder = padding.PKCS7(BLOCK_BYTES * 8).padder()
    padded = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_aes_key(encrypt_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """X-Lark-Signature for a request: sha256 hex of (timestamp + nonce + key) + raw body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + body).hexdigest()
