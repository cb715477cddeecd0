"""A fake WeCom API (gettoken, message/send) and builders for signed, encrypted WeCom
callbacks, shared by the tests and bench/.

Run alone: `python -m tests.fakes.wecom --port 8601` (CorpID wwfakecorp0000001, Secret
fake-corp-secret, AgentId 1000002).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from typing import Protocol
from urllib.parse import urlencode
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET

from channels_app.crypto import WXBizMsgCrypt, signature
from tests.fakes.server import FakeServer, Recorded, Response, serve_forever

TEXT_LIMIT_BYTES = 2048
TOKEN_LIFETIME = 7200
# message/send with "enable_duplicate_check": 1 drops a request whose JSON equals one taken
# within duplicate_check_interval seconds (default 1800, at most 4 hours).
DUPLICATE_CHECK_DEFAULT = 1800
DUPLICATE_CHECK_MAX = 4 * 3600
# The standalone fake's credentials (a bot pointed at it needs the same).
DEFAULT_CORP_ID = "wwfakecorp0000001"
DEFAULT_CORP_SECRET = "fake-corp-secret"


def _error(errcode: int, errmsg: str) -> Response:
    # WeCom reports API errors in the JSON with HTTP 200, never with the status code.
    return Response(200, {"errcode": errcode, "errmsg": errmsg})


class FakeWeCom(FakeServer):
    """gettoken and message/send as qyapi.weixin.qq.com answers them.

    Tokens are "tok-<n>"; while one is valid, gettoken hands out the same one (as WeCom
    does). `expire_token()` ends it early, so the next send with it gets 42001.
    `users`, if set, is who exists: others land in `invaliduser` (81013 if nobody is left).
    A send with enable_duplicate_check whose request JSON equals one taken within its
    interval is answered ok and not delivered again (`sent` holds what users received,
    `duplicates_dropped` the repeats).
    """

    name = "fake-wecom"
    routes = [
        ("GET", r"/cgi-bin/gettoken", "gettoken"),
        ("POST", r"/cgi-bin/message/send", "message_send"),
    ]

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        corp_id: str = DEFAULT_CORP_ID,
        corp_secret: str = DEFAULT_CORP_SECRET,
        agent_id: int = 1000002,
        users: set[str] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.corp_id = corp_id
        self.corp_secret = corp_secret
        self.agent_id = agent_id
        self.users = users
        self.sent: list[dict] = []
        self.duplicates_dropped: list[dict] = []
        self.tokens_issued = 0
        # request JSON -> (when taken, the answer it got), for the duplicate check
        self._taken: dict[str, tuple[float, dict]] = {}
        self._token: str | None = None
        self._token_expires = 0.0
        self._msgids = itertools.count(1)
        self._state = threading.Lock()

    # -- scripting ---------------------------------------------------------------------

    def expire_token(self) -> None:
        with self._state:
            self._token_expires = 0.0

    @property
    def current_token(self) -> str | None:
        with self._state:
            return self._token if time.time() < self._token_expires else None

    # -- routes ------------------------------------------------------------------------

    def gettoken(self, record: Recorded, match: re.Match) -> Response:
        corp_id = record.query.get("corpid", [""])[0]
        secret = record.query.get("corpsecret", [""])[0]
        if not corp_id:
            return _error(41002, "corpid missing")
        if not secret:
            return _error(41004, "corpsecret missing")
        if corp_id != self.corp_id:
            return _error(40013, "invalid corpid")
        if secret != self.corp_secret:
            return _error(40001, "invalid credential")
        with self._state:
            now = time.time()
            if self._token is None or now >= self._token_expires:
                self.tokens_issued += 1
                self._token = f"tok-{self.tokens_issued}"
                self._token_expires = now + TOKEN_LIFETIME
            remaining = int(self._token_expires - now)
            return Response(200, {"errcode": 0, "errmsg": "ok", "access_token": self._token, "expires_in": remaining})

    def message_send(self, record: Recorded, match: re.Match) -> Response:
        token = record.query.get("access_token", [""])[0]
        if not token:
            return _error(41001, "access_token missing")
        with self._state:
            if token != self._token:
                return _error(40014, "invalid access_token")
            if time.time() >= self._token_expires:
                return _error(42001, "access_token expired")
        try:
            message = record.json()
        except ValueError:
            return _error(47001, "data format error")
        if not isinstance(message, dict):
            return _error(47001, "data format error")
        if message.get("msgtype") != "text":
            return _error(40008, "invalid message type")
        agent_id = message.get("agentid")
        if not isinstance(agent_id, int) or agent_id != self.agent_id:
            return _error(40056, "invalid agentid")
        touser = message.get("touser")
        if not isinstance(touser, str) or not touser:
            return _error(40031, "invalid user list")
        text = message.get("text")
        content = text.get("content") if isinstance(text, dict) else None
        if not isinstance(content, str) or not content:
            return _error(44004, "empty content")
        if len(content.encode("utf-8")) > TEXT_LIMIT_BYTES:
            return _error(45002, "content size out of limit")
        recipients = touser.split("|")
        invalid = [user for user in recipients if self.users is not None and user not in self.users]
        if len(invalid) == len(recipients):
            return _error(81013, "user & party & tag all invalid")
        with self._state:
            repeat = self._repeat_of(message)
            if repeat is not None:
                self.duplicates_dropped.append(message)
                return Response(200, repeat)
            self.sent.append(message)
            answer = {
                "errcode": 0,
                "errmsg": "ok",
                "invaliduser": "|".join(invalid),
                "invalidparty": "",
                "invalidtag": "",
                "unlicenseduser": "",
                "msgid": f"fake-msgid-{next(self._msgids)}",
            }
            if message.get("enable_duplicate_check") == 1:
                self._taken[json.dumps(message, sort_keys=True, ensure_ascii=False)] = (time.time(), answer)
        return Response(200, answer)

    def _repeat_of(self, message: dict) -> dict | None:
        """The answer of the identical request taken within this one's duplicate-check
        interval, if it asks for the check and there was one."""
        if message.get("enable_duplicate_check") != 1:
            return None
        interval = message.get("duplicate_check_interval", DUPLICATE_CHECK_DEFAULT)
        if not isinstance(interval, int) or not 0 < interval <= DUPLICATE_CHECK_MAX:
            interval = DUPLICATE_CHECK_DEFAULT
        earlier = self._taken.get(json.dumps(message, sort_keys=True, ensure_ascii=False))
        if earlier is None or time.time() - earlier[0] >= interval:
            return None
        return earlier[1]


# -- callbacks, as WeCom sends them -----------------------------------------------------


class CallbackCredentials(Protocol):
    """What signs and encrypts a callback: a Bot has these, or any stand-in object."""

    app_id: str
    token: str
    encoding_aes_key: str


def wecom_bot_config(bot: CallbackCredentials, api_base_url: str, backend: str, agent_id: int = 1000002) -> dict:
    """The config-as-code entry (import_config) of a WeCom bot named helpdesk that sends to
    the fake at api_base_url, with `bot`'s uuid, Token and EncodingAESKey."""
    return {
        "name": "helpdesk",
        "platform": "wecom",
        "uuid": str(bot.uuid),
        "app_id": DEFAULT_CORP_ID,
        "app_secret": DEFAULT_CORP_SECRET,
        "token": bot.token,
        "encoding_aes_key": bot.encoding_aes_key,
        "api_base_url": api_base_url,
        "extra": {"agent_id": agent_id},
        "default_backend": backend,
    }


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def wecom_text_xml(
    corp_id: str, user: str, content: str, msg_id: int | str, agent_id: int | str, create_time: int | None = None
) -> str:
    """A decrypted text message the way WeCom writes it (newlines between elements)."""
    return (
        f"<xml><ToUserName>{_cdata(corp_id)}</ToUserName>\n"
        f"<FromUserName>{_cdata(user)}</FromUserName>\n"
        f"<CreateTime>{create_time if create_time is not None else int(time.time())}</CreateTime>\n"
        f"<MsgType><![CDATA[text]]></MsgType>\n"
        f"<Content>{_cdata(content)}</Content>\n"
        f"<MsgId>{msg_id}</MsgId>\n"
        f"<AgentID>{agent_id}</AgentID>\n"
        f"</xml>"
    )


def _agent_id_of(xml_text: str) -> str:
    try:
        return SafeET.fromstring(xml_text, forbid_dtd=True).findtext("AgentID") or ""
    except (ParseError, ValueError):
        return ""  # a deliberately broken payload still gets an envelope


def _signed_query(
    credentials: CallbackCredentials,
    encrypted: str,
    timestamp: int | None,
    nonce: str | None,
    extra: dict[str, str] | None = None,
) -> str:
    timestamp_text = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce if nonce is not None else str(secrets.randbelow(10**10))
    params = {
        "msg_signature": signature(str(credentials.token), timestamp_text, nonce, encrypted),
        "timestamp": timestamp_text,
        "nonce": nonce,
        **(extra or {}),
    }
    return urlencode(params)


def wecom_envelope(
    credentials: CallbackCredentials,
    encrypted: str,
    agent_id: str = "",
    timestamp: int | None = None,
    nonce: str | None = None,
) -> tuple[str, bytes]:
    """Query string and body of a callback POST around any Encrypt value, signed with
    the Token (tests use it to sign ciphertexts that are broken on purpose)."""
    body = (
        f"<xml><ToUserName>{_cdata(str(credentials.app_id))}</ToUserName>"
        f"<AgentID>{_cdata(agent_id)}</AgentID>"
        f"<Encrypt>{_cdata(encrypted)}</Encrypt></xml>"
    )
    return _signed_query(credentials, encrypted, timestamp, nonce), body.encode("utf-8")


def wecom_callback(
    credentials: CallbackCredentials, xml_text: str, timestamp: int | None = None, nonce: str | None = None
) -> tuple[str, bytes]:
    """The query string and body of the POST WeCom sends for the decrypted xml_text."""
    crypt = WXBizMsgCrypt(str(credentials.encoding_aes_key), str(credentials.app_id))
    return wecom_envelope(credentials, crypt.encrypt(xml_text), _agent_id_of(xml_text), timestamp, nonce)


def wecom_url_verification(
    credentials: CallbackCredentials, echo: str, timestamp: int | None = None, nonce: str | None = None
) -> str:
    """The query string of the GET the WeCom console sends when the admin saves the URL."""
    crypt = WXBizMsgCrypt(str(credentials.encoding_aes_key), str(credentials.app_id))
    echostr = crypt.encrypt(echo)
    return _signed_query(credentials, echostr, timestamp, nonce, {"echostr": echostr})


if __name__ == "__main__":
    serve_forever(FakeWeCom, "Fake WeCom API (gettoken, message/send)")
