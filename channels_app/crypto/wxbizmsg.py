"""The WXBizMsgCrypt scheme shared by WeCom, WeChat Official Accounts (safe mode) and the
WeChat Open Platform: a SHA-1 signature over four sorted strings, and AES-256-CBC with
the IV taken from the key and PKCS#7 padding to 32-byte blocks.

Plaintext layout: random(16) + uint32 big-endian byte length of msg + msg + receive id.
The receive id is the CorpID (WeCom self-built app) or the AppID (WeChat), so a message
encrypted for another company or account does not decrypt here even with the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# The scheme pads to 32 bytes, not AES's 16: a generic PKCS#7 unpadder refuses valid
# messages whose pad value is above 16.
PAD_BLOCK = 32
RANDOM_BYTES = 16
LENGTH_BYTES = 4
ENCODING_AES_KEY_LENGTH = 43


class WXBizMsgCryptError(ValueError):
    """Base of every failure of this scheme; the message says what to check."""


class InvalidEncodingAESKey(WXBizMsgCryptError):
    """The configured EncodingAESKey is not 43 characters of base64 (a 32-byte key)."""


class MalformedCiphertext(WXBizMsgCryptError):
    """The ciphertext cannot be a ciphertext at all: not base64, or not whole AES blocks."""


class DecryptionFailed(WXBizMsgCryptError):
    """The ciphertext decrypts to garbage: the EncodingAESKey differs from the sender's,
    or the data was altered."""


class ReceiveIdMismatch(WXBizMsgCryptError):
    """The message decrypted but was encrypted for another CorpID / AppID."""


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """msg_signature: SHA-1 of the four strings sorted and joined, lowercase hex."""
    joined = "".join(sorted([token, timestamp, nonce, encrypt]))
    # SHA-1 is what the platforms compute; we cannot choose another hash.
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()  # noqa: S324


def signature_matches(expected: str, token: str, timestamp: str, nonce: str, encrypt: str) -> bool:
    """Constant-time check of a received msg_signature. Compared as bytes because
    hmac.compare_digest refuses non-ASCII str, and the received value is the caller's."""
    computed = signature(token, timestamp, nonce, encrypt)
    return hmac.compare_digest(computed.encode("ascii"), expected.encode("utf-8"))


def decode_encoding_aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key an EncodingAESKey stands for; also how a form can validate one."""
    if len(encoding_aes_key) != ENCODING_AES_KEY_LENGTH:
        raise InvalidEncodingAESKey(
            f"EncodingAESKey must be {ENCODING_AES_KEY_LENGTH} characters, not {len(encoding_aes_key)}; "
            "copy it again from the platform's callback settings"
        )
    try:
        # The platforms drop the one "=" of a 32-byte key's base64; put it back.
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEncodingAESKey("EncodingAESKey holds characters that are not base64") from exc
    if len(key) != 32:
        raise InvalidEncodingAESKey("EncodingAESKey does not decode to a 32-byte key")
    return key


def _cdata(text: str) -> str:
    # "]]>" would end the section early; split it across two sections instead.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


class WXBizMsgCrypt:
    """Encrypt and decrypt for one EncodingAESKey and one receive id."""

    def __init__(self, encoding_aes_key: str, receive_id: str) -> None:
        self._key = decode_encoding_aes_key(encoding_aes_key)
        self._receive_id = receive_id.encode("utf-8")

    def _cipher(self) -> Cipher:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def decrypt(self, ciphertext_b64: str) -> str:
        """The msg inside an Encrypt / echostr value, after every check has passed."""
        try:
            data = base64.b64decode(ciphertext_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedCiphertext("ciphertext is not valid base64") from exc
        if not data or len(data) % 16:
            raise MalformedCiphertext(
                f"ciphertext is {len(data)} bytes, not a whole number of 16-byte AES blocks (truncated?)"
            )
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(data) + decryptor.finalize()

        pad = plain[-1]
        if not 1 <= pad <= PAD_BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise DecryptionFailed(
                "padding is invalid: the EncodingAESKey differs from the sender's, or the data was altered"
            )
        content = plain[:-pad]
        header = RANDOM_BYTES + LENGTH_BYTES
        if len(content) < header:
            raise DecryptionFailed("plaintext is shorter than its header: wrong EncodingAESKey or altered data")
        (msg_length,) = struct.unpack(">I", content[RANDOM_BYTES:header])
        if header + msg_length > len(content):
            raise DecryptionFailed(
                f"message length field ({msg_length}) runs past the plaintext: wrong EncodingAESKey or altered data"
            )
        msg = content[header : header + msg_length]
        receive_id = content[header + msg_length :]
        if not hmac.compare_digest(receive_id, self._receive_id):
            shown = receive_id[:64].decode("utf-8", errors="replace")
            raise ReceiveIdMismatch(f"message is for receive id {shown!r}, not {self._receive_id.decode('utf-8')!r}")
        try:
            return msg.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptionFailed("message is not UTF-8 text") from exc

    def encrypt(self, msg: str, random16: bytes | None = None) -> str:
        """Base64 ciphertext of msg. random16 is fixed only by tests and vectors."""
        if random16 is None:
            random16 = os.urandom(RANDOM_BYTES)
        if len(random16) != RANDOM_BYTES:
            raise ValueError(f"random16 must be {RANDOM_BYTES} bytes, not {len(random16)}")
        body = msg.encode("utf-8")
        plain = random16 + struct.pack(">I", len(body)) + body + self._receive_id
        pad = PAD_BLOCK - len(plain) % PAD_BLOCK
        plain += bytes([pad]) * pad
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")

    def reply_envelope(self, token: str, msg: str, timestamp: str, nonce: str, random16: bytes | None = None) -> str:
        """The XML of an encrypted passive reply, signed over its own timestamp and nonce."""
        encrypted = self.encrypt(msg, random16)
        signed = signature(token, timestamp, nonce, encrypted)
        return (
            f"<xml><Encrypt>{_cdata(encrypted)}</Encrypt>"
            f"<MsgSignature>{_cdata(signed)}</MsgSignature>"
            f"<TimeStamp>{int(timestamp)}</TimeStamp>"
            f"<Nonce>{_cdata(nonce)}</Nonce></xml>"
        )
