"""Message crypto shared by more than one platform adapter."""

from channels_app.crypto.wxbizmsg import (
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

__all__ = [
    "DecryptionFailed",
    "InvalidEncodingAESKey",
    "MalformedCiphertext",
    "ReceiveIdMismatch",
    "WXBizMsgCrypt",
    "WXBizMsgCryptError",
    "decode_encoding_aes_key",
    "signature",
    "signature_matches",
]
