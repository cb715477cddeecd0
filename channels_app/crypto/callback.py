"""Request plumbing shared by the platforms on the WXBizMsgCrypt scheme (WeCom, WeChat
Official Accounts): the signed query string, the XML bodies, and decryption errors
turned into the callback's refusals."""

from __future__ import annotations

import re
from urllib.parse import unquote
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from django.http import HttpRequest

from bots.models import Bot
from channels_app.crypto.wxbizmsg import (
    InvalidEncodingAESKey,
    MalformedCiphertext,
    WXBizMsgCrypt,
    WXBizMsgCryptError,
)
from channels_app.errors import MalformedRequest, SignatureInvalid

# Plain seconds. Python refuses int() on strings over 4,300 digits with a ValueError
# that would otherwise surface as a 500, so the length is bounded too.
TIMESTAMP = re.compile(r"[0-9]{1,12}")


def query_params(request: HttpRequest) -> dict[str, str]:
    """The query string with '+' kept as '+'.

    request.GET turns a literal '+' into a space (form encoding). The platforms
    percent-encode base64 values, but a proxy that decodes them once would leave bare '+'
    signs, and base64 never contains a space, so reading '+' literally is right in both
    cases.
    """
    params: dict[str, str] = {}
    for pair in request.META.get("QUERY_STRING", "").split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        name = unquote(name)
        if name in params:
            # Two values for one signed field: refuse rather than guess which was signed.
            raise MalformedRequest(f"query parameter {name[:40]!r} appears more than once")
        params[name] = unquote(value)
    return params


def xml_fields(data: bytes | str, what: str) -> dict[str, str]:
    """The child elements of an XML document from outside, refusing DTDs, entities and
    external references (billion laughs, XXE)."""
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise MalformedRequest(f"{what} contains a forbidden XML construct ({type(exc).__name__})") from exc
    except ParseError as exc:
        raise MalformedRequest(f"{what} is not well-formed XML: {exc}") from exc
    return {child.tag: child.text or "" for child in root}


def bot_crypt(bot: Bot) -> WXBizMsgCrypt:
    """The bot's cipher: its EncodingAESKey, with its AppID / CorpID as the receive id."""
    try:
        return WXBizMsgCrypt(str(bot.encoding_aes_key), str(bot.app_id))
    except InvalidEncodingAESKey as exc:
        # Our configuration, not the caller's fault; but without a key nothing can be
        # authenticated, so the request is refused like any other we cannot verify.
        raise SignatureInvalid(f"this bot's EncodingAESKey is unusable: {exc}") from exc


def decrypt_for_bot(bot: Bot, ciphertext: str) -> str:
    try:
        return bot_crypt(bot).decrypt(ciphertext)
    except MalformedCiphertext as exc:
        # Signed but structurally impossible: a broken sender, not a wrong key.
        raise MalformedRequest(f"cannot decrypt: {exc}") from exc
    except WXBizMsgCryptError as exc:
        # A wrong EncodingAESKey or a message for another receiver is an authentication
        # failure: the request proved knowledge of the Token but not of the key.
        raise SignatureInvalid(f"cannot decrypt: {exc}") from exc
