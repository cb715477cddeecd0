"""Shared pieces of the WeChat Official Account tests: the credentials WeChat signs
with, and callbacks through the real view, timed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from tests.fakes.wechat_mp import DEFAULT_ACCOUNT, mp_encrypted_callback, mp_plain_callback, mp_text_xml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
APP_ID = "wxb7e3c0a1d2f40001"
SECRET = "mp-secret-do-not-log-4c1e9a"
TOKEN = "kT9wQ2zR7pX4mN1bV6cY"
AES_KEY = "T4Dvpcb4hwjHTuKbb3Lq059isDNiyun3lAG4eYRFg+k"
OTHER_AES_KEY = "FtWEx43EKYx0zBs+PkM8NTLkgIdO1vqiFciNgz4WEN0"
OPENID = "oJ7Yt5Qm0sX2kP9aB3cD4eF6gH8i"
ACCOUNT = DEFAULT_ACCOUNT


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def creds(**changes) -> SimpleNamespace:
    """What WeChat signs and encrypts with; differs from the bot only where a test says."""
    return SimpleNamespace(**{"app_id": APP_ID, "token": TOKEN, "encoding_aes_key": AES_KEY, **changes})


def text_xml(content: str = "明天北京会下雨吗？", msg_id: int | str = 24587600000000001, openid: str = OPENID) -> str:
    return mp_text_xml(openid, content, msg_id, ACCOUNT)


def callback(mode: str, xml: str, credentials: SimpleNamespace | None = None, **kwargs) -> tuple[str, bytes]:
    """Query and body of the POST WeChat sends in `mode` (plain, compatible or safe)."""
    credentials = credentials or creds()
    if mode == "plain":
        return mp_plain_callback(credentials, xml, **kwargs)
    return mp_encrypted_callback(credentials, xml, compatible=mode == "compatible", **kwargs)


@dataclass
class Delivery:
    status: int
    body: bytes
    seconds: float


def post(client, bot, query: str, body: bytes, platform: str = "wechat_mp"):
    return client.post(f"/callback/{platform}/{bot.uuid}/?{query}", data=body, content_type="text/xml")


def deliver(client, bot, mode: str, xml: str, **kwargs) -> Delivery:
    """One delivery of xml as WeChat makes it, timed."""
    started = time.monotonic()
    response = post(client, bot, *callback(mode, xml, **kwargs))
    return Delivery(response.status_code, response.content, time.monotonic() - started)
