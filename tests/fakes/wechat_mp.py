"""A fake WeChat Official Account API (api.weixin.qq.com: cgi-bin/token, cgi-bin/stable_token,
message/custom/send) and builders for the callbacks WeChat sends (plaintext, compatible
and safe mode) and readers for the passive replies we send back. Shared by the tests
and bench/.

Run alone: `python -m tests.fakes.wechat_mp --port 8602` (AppID wxf00dfa4e00000001,
AppSecret fake-mp-app-secret; point the bot's API base URL at it).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from typing import Protocol
from urllib.parse import urlencode
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET

from channels_app.crypto import WXBizMsgCrypt, signature, signature_matches
from tests.fakes.server import FakeServer, Recorded, Response, serve_forever

TEXT_LIMIT_BYTES = 2048
TOKEN_LIFETIME = 7200
# The standalone fake's credentials (a bot pointed at it needs the same).
DEFAULT_APP_ID = "wxf00dfa4e00000001"
DEFAULT_APP_SECRET = "fake-mp-app-secret"
# The account's original id (原始ID): ToUserName of every callback.
DEFAULT_ACCOUNT = "gh_f00dfa4e0001"


def _error(errcode: int, errmsg: str) -> Response:
    # WeChat reports API errors in the JSON with HTTP 200, never with the status code.
    return Response(200, {"errcode": errcode, "errmsg": f"{errmsg} rid: fake-{secrets.token_hex(4)}"})


class _TokenSlot:
    """One kind of access token (cgi-bin/token and cgi-bin/stable_token are kept apart,
    as WeChat keeps them)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.issued = 0
        self.token: str | None = None
        self.expires = 0.0

    def current(self, now: float, force: bool = False) -> tuple[str, int]:
        if force or self.token is None or now >= self.expires:
            self.issued += 1
            self.token = f"{self.prefix}-{self.issued}"
            self.expires = now + TOKEN_LIFETIME
        return self.token, int(self.expires - now)


class FakeWeChatMP(FakeServer):
    """cgi-bin/token, cgi-bin/stable_token and message/custom/send as api.weixin.qq.com
    answers them.

    Stable tokens are "tok-<n>", plain ones "plain-<n>"; while one is valid the same one is
    handed out again. `expire_token()` ends the stable token early (42001 on its next use).
    `verified=False` is an unverified account: custom/send answers 48001. Users in
    `silent_users` have not written for more than 48 hours: 45015. Users in `unknown_users`
    never followed the account: 40003.
    """

    name = "fake-wechat-mp"
    routes = [
        ("GET", r"/cgi-bin/token", "token"),
        ("POST", r"/cgi-bin/stable_token", "stable_token"),
        ("POST", r"/cgi-bin/message/custom/send", "custom_send"),
    ]

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
        verified: bool = True,
    ) -> None:
        super().__init__(host, port)
        self.app_id = app_id
        self.app_secret = app_secret
        self.verified = verified
        self.silent_users: set[str] = set()
        self.unknown_users: set[str] = set()
        self.sent: list[dict] = []
        self._stable = _TokenSlot("tok")
        self._plain = _TokenSlot("plain")
        self._state = threading.Lock()

    # -- scripting ---------------------------------------------------------------------

    def expire_token(self) -> None:
        with self._state:
            self._stable.expires = 0.0

    # -- routes ------------------------------------------------------------------------

    def _check_credentials(self, grant_type: object, app_id: object, secret: object) -> Response | None:
        if grant_type != "client_credential":
            return _error(40002, "invalid grant_type")
        if not app_id:
            return _error(41002, "appid missing")
        if not secret:
            return _error(41004, "appsecret missing")
        if app_id != self.app_id:
            return _error(40013, "invalid appid")
        if secret != self.app_secret:
            return _error(40125, "invalid appsecret")
        return None

    def token(self, record: Recorded, match: re.Match) -> Response:
        query = {name: values[0] for name, values in record.query.items()}
        refused = self._check_credentials(query.get("grant_type"), query.get("appid"), query.get("secret"))
        if refused is not None:
            return refused
        with self._state:
            token, expires_in = self._plain.current(time.time())
        # No errcode on success: WeChat's token answers carry one only when they fail.
        return Response(200, {"access_token": token, "expires_in": expires_in})

    def stable_token(self, record: Recorded, match: re.Match) -> Response:
        try:
            body = record.json()
        except ValueError:
            return _error(47001, "data format error")
        if not isinstance(body, dict):
            return _error(47001, "data format error")
        refused = self._check_credentials(body.get("grant_type"), body.get("appid"), body.get("secret"))
        if refused is not None:
            return refused
        with self._state:
            token, expires_in = self._stable.current(time.time(), force=body.get("force_refresh") is True)
        return Response(200, {"access_token": token, "expires_in": expires_in})

    def _token_problem(self, token: str) -> Response | None:
        now = time.time()
        with self._state:
            for slot in (self._stable, self._plain):
                if token == slot.token:
                    return _error(42001, "access_token expired") if now >= slot.expires else None
        return _error(40001, "invalid credential, access_token is invalid or not latest")

    def custom_send(self, record: Recorded, match: re.Match) -> Response:
        token = record.query.get("access_token", [""])[0]
        if not token:
            return _error(41001, "access_token missing")
        problem = self._token_problem(token)
        if problem is not None:
            return problem
        if not self.verified:
            return _error(48001, "api unauthorized")
        try:
            message = record.json()
        except ValueError:
            return _error(47001, "data format error")
        if not isinstance(message, dict):
            return _error(47001, "data format error")
        if message.get("msgtype") != "text":
            return _error(40008, "invalid message type")
        touser = message.get("touser")
        if not isinstance(touser, str) or not touser or touser in self.unknown_users:
            return _error(40003, "invalid openid")
        text = message.get("text")
        content = text.get("content") if isinstance(text, dict) else None
        if not isinstance(content, str) or not content:
            return _error(44004, "empty content")
        if len(content.encode("utf-8")) > TEXT_LIMIT_BYTES:
            return _error(45002, "content size out of limit")
        if touser in self.silent_users:
            return _error(45015, "response out of time limit or subscription is canceled")
        self.sent.append(message)
        return Response(200, {"errcode": 0, "errmsg": "ok"})


# -- callbacks, as WeChat sends them ----------------------------------------------------


class CallbackCredentials(Protocol):
    """What signs and encrypts a callback: a Bot has these, or any stand-in object."""

    app_id: str
    token: str
    encoding_aes_key: str


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def mp_text_xml(
    openid: str, content: str, msg_id: int | str, account: str = DEFAULT_ACCOUNT, create_time: int | None = None
) -> str:
    """A text message the way WeChat writes it (newlines between elements)."""
    return (
        f"<xml><ToUserName>{_cdata(account)}</ToUserName>\n"
        f"<FromUserName>{_cdata(openid)}</FromUserName>\n"
        f"<CreateTime>{create_time if create_time is not None else int(time.time())}</CreateTime>\n"
        f"<MsgType><![CDATA[text]]></MsgType>\n"
        f"<Content>{_cdata(content)}</Content>\n"
        f"<MsgId>{msg_id}</MsgId>\n"
        f"</xml>"
    )


def mp_event_xml(
    openid: str,
    event: str,
    event_key: str | None = None,
    account: str = DEFAULT_ACCOUNT,
    create_time: int | None = None,
) -> str:
    """An event push (subscribe, unsubscribe, CLICK, …)."""
    key = f"<EventKey>{_cdata(event_key)}</EventKey>\n" if event_key is not None else ""
    return (
        f"<xml><ToUserName>{_cdata(account)}</ToUserName>\n"
        f"<FromUserName>{_cdata(openid)}</FromUserName>\n"
        f"<CreateTime>{create_time if create_time is not None else int(time.time())}</CreateTime>\n"
        f"<MsgType><![CDATA[event]]></MsgType>\n"
        f"<Event>{_cdata(event)}</Event>\n"
        f"{key}</xml>"
    )


def _stamp(timestamp: int | None, nonce: str | None) -> tuple[str, str]:
    return (
        str(int(time.time()) if timestamp is None else timestamp),
        nonce if nonce is not None else str(secrets.randbelow(10**10)),
    )


def _url_signature(token: str, timestamp: str, nonce: str) -> str:
    # The three-field signature of plaintext callbacks and the URL check (no Encrypt).
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode("utf-8")).hexdigest()  # noqa: S324


def _openid_of(xml_text: str) -> str:
    try:
        return SafeET.fromstring(xml_text, forbid_dtd=True).findtext("FromUserName") or ""
    except (ParseError, ValueError):
        return ""  # a deliberately broken payload still gets a query


def mp_url_verification(
    credentials: CallbackCredentials, echostr: str, timestamp: int | None = None, nonce: str | None = None
) -> str:
    """The query string of the GET WeChat sends when the admin submits the server URL."""
    stamp, nonce = _stamp(timestamp, nonce)
    return urlencode(
        {
            "signature": _url_signature(str(credentials.token), stamp, nonce),
            "echostr": echostr,
            "timestamp": stamp,
            "nonce": nonce,
        }
    )


def mp_plain_callback(
    credentials: CallbackCredentials, xml_text: str, timestamp: int | None = None, nonce: str | None = None
) -> tuple[str, bytes]:
    """Query string and body of a plaintext-mode (明文模式) POST: the body is not signed."""
    stamp, nonce = _stamp(timestamp, nonce)
    query = urlencode(
        {
            "signature": _url_signature(str(credentials.token), stamp, nonce),
            "timestamp": stamp,
            "nonce": nonce,
            "openid": _openid_of(xml_text),
        }
    )
    return query, xml_text.encode("utf-8")


def mp_encrypted_envelope(
    credentials: CallbackCredentials,
    encrypted: str,
    timestamp: int | None = None,
    nonce: str | None = None,
    plain_fields: str = "",
    openid: str = "",
    account: str = DEFAULT_ACCOUNT,
) -> tuple[str, bytes]:
    """Query string and body of a safe-mode POST around any Encrypt value, signed with the
    Token (tests use it to sign ciphertexts that are broken on purpose). `plain_fields`
    is what compatible mode (兼容模式) puts next to Encrypt."""
    stamp, nonce = _stamp(timestamp, nonce)
    token = str(credentials.token)
    query = urlencode(
        {
            "signature": _url_signature(token, stamp, nonce),
            "timestamp": stamp,
            "nonce": nonce,
            "openid": openid,
            "encrypt_type": "aes",
            "msg_signature": signature(token, stamp, nonce, encrypted),
        }
    )
    body = (
        f"<xml><ToUserName>{_cdata(account)}</ToUserName>\n{plain_fields}<Encrypt>{_cdata(encrypted)}</Encrypt>\n</xml>"
    )
    return query, body.encode("utf-8")


def mp_encrypted_callback(
    credentials: CallbackCredentials,
    xml_text: str,
    timestamp: int | None = None,
    nonce: str | None = None,
    compatible: bool = False,
) -> tuple[str, bytes]:
    """The POST WeChat sends in safe mode (安全模式), or with compatible=True in compatible
    mode (兼容模式: the plaintext fields travel next to the ciphertext)."""
    crypt = WXBizMsgCrypt(str(credentials.encoding_aes_key), str(credentials.app_id))
    plain_fields = ""
    if compatible:
        inner = xml_text.strip()
        plain_fields = inner[len("<xml>") : -len("</xml>")] if inner.startswith("<xml>") else ""
        plain_fields = re.sub(r"^<ToUserName>.*?</ToUserName>\n?", "", plain_fields)
    return mp_encrypted_envelope(
        credentials, crypt.encrypt(xml_text), timestamp, nonce, plain_fields, _openid_of(xml_text)
    )


class PassiveReplyInvalid(AssertionError):
    """What we answered is not a passive reply WeChat would accept."""


def read_passive_reply(credentials: CallbackCredentials, body: bytes, encrypted: bool) -> dict[str, str]:
    """The fields of a passive reply, checked the way WeChat checks it: in safe mode the
    envelope's MsgSignature over its own TimeStamp and Nonce, then the decryption for
    this AppID."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except ParseError as exc:
        raise PassiveReplyInvalid(f"not XML: {body[:200]!r}") from exc
    if encrypted:
        fields = {child.tag: child.text or "" for child in root}
        if set(fields) != {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}:
            raise PassiveReplyInvalid(f"not an encrypted envelope: {sorted(fields)}")
        if not signature_matches(
            fields["MsgSignature"], str(credentials.token), fields["TimeStamp"], fields["Nonce"], fields["Encrypt"]
        ):
            raise PassiveReplyInvalid("MsgSignature does not match the envelope")
        inner = WXBizMsgCrypt(str(credentials.encoding_aes_key), str(credentials.app_id)).decrypt(fields["Encrypt"])
        root = SafeET.fromstring(inner, forbid_dtd=True)
    fields = {child.tag: child.text or "" for child in root}
    if fields.get("MsgType") != "text":
        raise PassiveReplyInvalid(f"not a text reply: {fields}")
    return fields


if __name__ == "__main__":
    serve_forever(FakeWeChatMP, "Fake WeChat Official Account API (token, stable_token, message/custom/send)")
