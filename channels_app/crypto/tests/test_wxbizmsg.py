"""The WXBizMsgCrypt scheme against the platforms' published vectors, and its refusals."""

from __future__ import annotations

import base64
import hashlib
import struct

import defusedxml.ElementTree as SafeET
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from channels_app.crypto import (
    DecryptionFailed,
    InvalidEncodingAESKey,
    MalformedCiphertext,
    ReceiveIdMismatch,
    WXBizMsgCrypt,
    WXBizMsgCryptError,
    decode_encoding_aes_key,
    signature,
    signature_matches,
)
from channels_app.crypto.tests.vectors import vector, vector_ids

SCHEME = {"wecom", "wechat_mp"}
KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
OTHER_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP = "wx5823bf96d3bd56c7"


def raw_aes(encoding_aes_key: str, plain: bytes) -> str:
    """AES-256-CBC with the scheme's key and IV, no padding or layout of ours: lets a
    test hand the decryptor any plaintext bytes it likes."""
    key = base64.b64decode(encoding_aes_key + "=")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def raw_aes_decrypt(encoding_aes_key: str, ciphertext: str) -> bytes:
    key = base64.b64decode(encoding_aes_key + "=")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    return decryptor.update(base64.b64decode(ciphertext)) + decryptor.finalize()


def layout(msg: bytes, receive_id: bytes, length: int | None = None) -> bytes:
    return b"R" * 16 + struct.pack(">I", len(msg) if length is None else length) + msg + receive_id


def test_the_vector_file_holds_the_scheme_vectors_we_rely_on():
    ids = {i for kind in ("url_verify", "signature", "decrypt", "encrypt-roundtrip") for i in vector_ids(SCHEME, kind)}
    assert {"v01", "v02", "v03", "v04", "v05", "v06", "v13", "v14", "v15", "v16", "v17", "v18"} <= ids


# -- published vectors ---------------------------------------------------------------------


@pytest.mark.parametrize("vector_id", vector_ids(SCHEME, "signature"))
def test_signature_vectors(vector_id):
    inputs, expected = vector(vector_id)["inputs"], vector(vector_id)["expected"]
    computed = signature(inputs["token"], inputs["timestamp"], inputs["nonce"], inputs["encrypt"])
    assert computed == expected["msg_signature"]
    assert signature_matches(
        expected["msg_signature"], inputs["token"], inputs["timestamp"], inputs["nonce"], inputs["encrypt"]
    )


@pytest.mark.parametrize("vector_id", vector_ids(SCHEME, "url_verify"))
def test_url_verification_vectors_sign_and_decrypt(vector_id):
    inputs, expected = vector(vector_id)["inputs"], vector(vector_id)["expected"]
    signed = signature(inputs["token"], inputs["timestamp"], inputs["nonce"], inputs["echostr"])
    assert signed == inputs["msg_signature"]
    crypt = WXBizMsgCrypt(inputs["encoding_aes_key"], inputs["receiveid"])
    assert crypt.decrypt(inputs["echostr"]) == expected["response_body"]


@pytest.mark.parametrize("vector_id", vector_ids(SCHEME, "decrypt"))
def test_decrypt_vectors_give_the_exact_bytes(vector_id):
    inputs, expected = vector(vector_id)["inputs"], vector(vector_id)["expected"]
    msg = WXBizMsgCrypt(inputs["encoding_aes_key"], expected["receiveid"]).decrypt(inputs["encrypt"])
    # Byte for byte: the newlines between elements are part of the message.
    assert msg.encode("utf-8") == expected["msg"].encode("utf-8")


@pytest.mark.parametrize("vector_id", vector_ids(SCHEME, "encrypt-roundtrip"))
def test_encrypt_vectors_with_their_fixed_random(vector_id):
    inputs, expected = vector(vector_id)["inputs"], vector(vector_id)["expected"]
    crypt = WXBizMsgCrypt(inputs["encoding_aes_key"], inputs["receiveid"])
    assert crypt.encrypt(inputs["msg"], inputs["random"].encode()) == expected["encrypt"]
    assert crypt.decrypt(expected["encrypt"]) == inputs["msg"]


def test_the_vectors_use_pad_values_a_16_byte_unpadder_refuses():
    # Guards the point of the 32-byte padding: real messages carry pads above 16.
    pads = set()
    for vector_id in vector_ids(SCHEME, "decrypt"):
        inputs = vector(vector_id)["inputs"]
        pads.add(raw_aes_decrypt(inputs["encoding_aes_key"], inputs["encrypt"])[-1])
    assert any(pad > 16 for pad in pads)


# -- padding to 32-byte blocks --------------------------------------------------------------


@pytest.mark.parametrize("extra", range(32))
def test_encrypt_pads_to_32_byte_blocks_with_every_pad_value(extra):
    crypt = WXBizMsgCrypt(KEY, CORP)
    msg = "x" * extra
    ciphertext = crypt.encrypt(msg)
    plain = raw_aes_decrypt(KEY, ciphertext)
    unpadded = 16 + 4 + extra + len(CORP)
    expected_pad = 32 - unpadded % 32
    assert len(plain) % 32 == 0
    assert plain[-expected_pad:] == bytes([expected_pad]) * expected_pad
    assert crypt.decrypt(ciphertext) == msg


def test_encrypt_counts_the_length_in_utf8_bytes():
    plain = raw_aes_decrypt(KEY, WXBizMsgCrypt(KEY, CORP).encrypt("你好"))
    assert struct.unpack(">I", plain[16:20]) == (6,)
    assert plain[20:26] == "你好".encode()


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\x00", id="pad-zero"),
        pytest.param(b"\x21" * 33, id="pad-33"),
        pytest.param(b"\x05\x05\x04\x05\x05", id="pad-bytes-differ"),
    ],
)
def test_bad_padding_is_refused(tail):
    body = layout(b"hello", CORP.encode())
    filler = b"z" * (-(len(body) + len(tail)) % 16)
    with pytest.raises(DecryptionFailed, match="padding"):
        WXBizMsgCrypt(KEY, CORP).decrypt(raw_aes(KEY, body + filler + tail))


def _padded(plain: bytes) -> bytes:
    pad = 32 - len(plain) % 32
    return plain + bytes([pad]) * pad


def test_a_length_field_running_past_the_end_is_refused():
    ciphertext = raw_aes(KEY, _padded(layout(b"hello", CORP.encode(), length=10_000)))
    with pytest.raises(DecryptionFailed, match="length"):
        WXBizMsgCrypt(KEY, CORP).decrypt(ciphertext)


def test_a_plaintext_shorter_than_its_header_is_refused():
    ciphertext = raw_aes(KEY, _padded(b"R" * 10))
    with pytest.raises(DecryptionFailed, match="header"):
        WXBizMsgCrypt(KEY, CORP).decrypt(ciphertext)


def test_a_message_that_is_not_utf8_is_refused():
    ciphertext = raw_aes(KEY, _padded(layout(b"\xff\xfe", CORP.encode())))
    with pytest.raises(DecryptionFailed, match="UTF-8"):
        WXBizMsgCrypt(KEY, CORP).decrypt(ciphertext)


# -- wrong key, wrong receiver, broken input ------------------------------------------------


def test_a_wrong_key_fails_to_decrypt():
    encrypt = vector("v03")["inputs"]["encrypt"]
    with pytest.raises(DecryptionFailed):
        WXBizMsgCrypt(OTHER_KEY, CORP).decrypt(encrypt)


@pytest.mark.parametrize("receive_id", ["wx0000000000000000", CORP[:-1], CORP + "7", ""])
def test_the_receive_id_must_match_exactly(receive_id):
    encrypt = vector("v03")["inputs"]["encrypt"]
    with pytest.raises(ReceiveIdMismatch) as caught:
        WXBizMsgCrypt(KEY, receive_id).decrypt(encrypt)
    # The log line tells the admin which CorpID the platform used.
    assert CORP in str(caught.value)


@pytest.mark.parametrize(
    "ciphertext",
    [
        pytest.param("", id="empty"),
        pytest.param("not base64 at all!", id="not-base64"),
        pytest.param("密文", id="non-ascii"),
        pytest.param("aGVsbG8=\n", id="whitespace"),
        pytest.param(base64.b64encode(b"x" * 21).decode(), id="not-whole-blocks"),
    ],
)
def test_input_that_cannot_be_a_ciphertext_is_malformed(ciphertext):
    with pytest.raises(MalformedCiphertext):
        WXBizMsgCrypt(KEY, CORP).decrypt(ciphertext)


def test_truncated_ciphertexts_are_refused():
    data = base64.b64decode(vector("v03")["inputs"]["encrypt"])
    crypt = WXBizMsgCrypt(KEY, CORP)
    with pytest.raises(MalformedCiphertext, match="truncated"):
        crypt.decrypt(base64.b64encode(data[:-5]).decode())
    # A whole block less is still valid AES, so the padding check has to catch it.
    with pytest.raises(DecryptionFailed):
        crypt.decrypt(base64.b64encode(data[:-16]).decode())


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        pytest.param(KEY[:-1], "must be 43 characters, not 42", id="42-chars"),
        pytest.param(KEY + "A", "must be 43 characters, not 44", id="44-chars"),
        pytest.param("", "must be 43 characters, not 0", id="empty"),
        pytest.param("!" * 43, "not base64", id="not-base64"),
        pytest.param("é" * 43, "not base64", id="non-ascii"),
    ],
)
def test_an_unusable_encoding_aes_key_is_refused_up_front_with_the_reason(key, reason):
    with pytest.raises(InvalidEncodingAESKey, match=reason):
        WXBizMsgCrypt(key, CORP)


def test_the_key_is_the_base64_of_the_encoding_aes_key_plus_one_pad():
    # The Open Platform's worked example uses an all-"A" EncodingAESKey: a zero key.
    assert decode_encoding_aes_key("A" * 43) == bytes(32)
    assert decode_encoding_aes_key(KEY) == base64.b64decode(KEY + "=")


def test_every_failure_is_a_wxbizmsgcrypt_error_and_a_value_error():
    for error in (InvalidEncodingAESKey, MalformedCiphertext, DecryptionFailed, ReceiveIdMismatch):
        assert issubclass(error, WXBizMsgCryptError) and issubclass(error, ValueError)


@given(st.text(max_size=300))
def test_decrypt_of_anything_returns_or_raises_only_scheme_errors(ciphertext):
    try:
        WXBizMsgCrypt(KEY, CORP).decrypt(ciphertext)
    except WXBizMsgCryptError:
        pass


@given(st.text(max_size=500), st.text(min_size=1, max_size=40))
def test_encrypt_then_decrypt_gives_the_message_back(msg, receive_id):
    crypt = WXBizMsgCrypt(KEY, receive_id)
    assert crypt.decrypt(crypt.encrypt(msg)) == msg


def test_encrypt_uses_fresh_random_bytes_each_time():
    crypt = WXBizMsgCrypt(KEY, CORP)
    assert crypt.encrypt("same") != crypt.encrypt("same")


def test_random16_must_be_16_bytes():
    with pytest.raises(ValueError, match="16 bytes"):
        WXBizMsgCrypt(KEY, CORP).encrypt("x", b"short")


# -- signatures ------------------------------------------------------------------------------


def test_signature_sorts_plainly_then_hashes_with_sha1():
    expected = hashlib.sha1(b"".join(sorted([b"tok", b"123", b"n0nce", b"ENC+/="]))).hexdigest()  # noqa: S324
    assert signature("tok", "123", "n0nce", "ENC+/=") == expected


@pytest.mark.parametrize("received", ["", "0" * 40, "5C45FF5E21C57E6AD56BAC8758B79B1D9AC89FD3", "签名", "a\x00b"])
def test_signature_matches_refuses_anything_else_without_raising(received):
    inputs = vector("v01")["inputs"]
    assert not signature_matches(received, inputs["token"], inputs["timestamp"], inputs["nonce"], inputs["echostr"])


# -- passive reply envelope -------------------------------------------------------------------


def test_reply_envelope_is_signed_over_its_own_timestamp_and_nonce():
    inputs, expected = vector("v13")["inputs"], vector("v13")["expected"]
    crypt = WXBizMsgCrypt(inputs["encoding_aes_key"], inputs["receiveid"])
    xml = crypt.reply_envelope("pamtest", inputs["msg"], "1409304348", "xxxxxx", inputs["random"].encode())

    fields = {child.tag: child.text for child in SafeET.fromstring(xml)}
    assert list(fields) == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert fields["Encrypt"] == expected["encrypt"]
    joined = "".join(sorted(["pamtest", "1409304348", "xxxxxx", expected["encrypt"]]))
    assert fields["MsgSignature"] == hashlib.sha1(joined.encode()).hexdigest()  # noqa: S324 (the protocol's hash)
    assert fields["TimeStamp"] == "1409304348"
    assert fields["Nonce"] == "xxxxxx"
    assert xml.startswith("<xml><Encrypt><![CDATA[") and "<TimeStamp>1409304348</TimeStamp>" in xml


def test_reply_envelope_round_trips_a_reply_with_cdata_terminators_in_it():
    crypt = WXBizMsgCrypt(KEY, CORP)
    reply = "<xml><Content><![CDATA[a]]]]><![CDATA[>b]]></Content></xml>"
    fields = {c.tag: c.text for c in SafeET.fromstring(crypt.reply_envelope("tok", reply, "1700000000", "n]]>1"))}
    assert fields["Nonce"] == "n]]>1"
    assert signature_matches(fields["MsgSignature"], "tok", "1700000000", "n]]>1", fields["Encrypt"])
    assert crypt.decrypt(fields["Encrypt"]) == reply
