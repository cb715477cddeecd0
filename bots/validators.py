from __future__ import annotations

import ipaddress
import re

from django.core.exceptions import ValidationError


def validate_cidr(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(f"{value!r} is not an IP address or CIDR (e.g. 203.0.113.0/24).") from None


def validate_cidr_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError('must be a list of CIDR strings, e.g. ["203.0.113.0/24"].')
    for item in value:
        validate_cidr(item)


# WXBizMsgCrypt's rule, as the platforms' official SDKs apply it: the base64 of a 32-byte
# AES key without its one "=" pad, so exactly 43 characters of the standard alphabet.
ENCODING_AES_KEY_LENGTH = 43
_ENCODING_AES_KEY = re.compile(r"[A-Za-z0-9+/]{43}")


def validate_encoding_aes_key(value: str) -> None:
    """Refuse a WeCom / WeChat EncodingAESKey the platform could not have issued. The
    message never repeats the value: it is a secret."""
    if _ENCODING_AES_KEY.fullmatch(value):
        return
    if len(value) != ENCODING_AES_KEY_LENGTH:
        raise ValidationError(
            f"EncodingAESKey must be exactly {ENCODING_AES_KEY_LENGTH} characters, not {len(value)}: "
            "copy it again from the platform's callback settings (or generate a new one there)."
        )
    raise ValidationError(
        "EncodingAESKey may hold only letters, digits, + and / (the base64 alphabet): "
        "copy it again from the platform's callback settings."
    )


def ip_in_cidrs(address, cidrs: list[str]) -> bool:
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
