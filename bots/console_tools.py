"""The test tools on a bot's console page.

"Send a test message" runs one dialog turn the way the worker would (routing, context,
model) but sends nothing and writes no context. "Check callback setup" builds the
URL-verification request the platform sends when an admin saves the callback URL,
signs and encrypts it with the bot's stored credentials, sends it through our own
callback endpoint (the full middleware stack, as if from the platform) and says in plain
words what is wrong.

Platforms are described in HANDSHAKE_CHECKS, one entry each: adding a platform's check
means adding an entry, nothing else.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest
from django.test import Client

from bots.models import Bot
from bots.platforms import Platform
from channels_app.adapters.feishu import crypto as feishu_crypto
from channels_app.crypto import WXBizMsgCrypt, WXBizMsgCryptError
from channels_app.crypto import signature as wx_signature
from channels_app.registry import adapter_for
from routing.backends import ModelError
from routing.context import ContextStore
from routing.dialog import answer, build_messages, http_client
from routing.engine import NoBackend, select_backend

TEST_CHAT_ID = "console-test"
TEST_SENDER_ID = "console-test"

# -- send a test message ---------------------------------------------------------------


@dataclass(frozen=True)
class DryRun:
    """What one dialog turn would do. `error` is set when it could not answer."""

    text: str
    chat_type: str
    route: str = ""
    backend: str = ""
    fallback_used: bool = False
    history: list[dict[str, str]] = field(default_factory=list)
    prompt: list[dict[str, str]] = field(default_factory=list)
    answer: str = ""
    model_ms: float = 0.0
    total_ms: float = 0.0
    error: str = ""


def dry_run(
    bot: Bot, text: str, chat_type: str = "p2p", chat_id: str = TEST_CHAT_ID, sender_id: str = TEST_SENDER_ID
) -> DryRun:
    """Answer `text` as the bot would, without sending the reply or saving the turn.

    With a real chat and sender id, the context is that conversation's (read, not
    changed); the default ids have a conversation of their own, which stays empty."""
    started = time.perf_counter()
    context = ContextStore()
    history = context.load(bot, chat_id, sender_id)
    base = {"text": text, "chat_type": chat_type, "history": history, "prompt": build_messages(bot, history, text)}
    try:
        selection = select_backend(bot, text, chat_type)
    except NoBackend as exc:
        return DryRun(**base, error=str(exc), total_ms=_ms_since(started))
    base.update(route=selection.explanation, backend=selection.backend.name)
    try:
        result = answer(bot, chat_id, sender_id, chat_type, text, http_client(), context)
    except (NoBackend, ModelError) as exc:
        return DryRun(**base, error=f"the model call failed: {exc}", total_ms=_ms_since(started))
    return DryRun(
        **{**base, "backend": result.backend.name, "history": result.history},
        fallback_used=result.backend.pk != selection.backend.pk,
        answer=result.text,
        model_ms=result.model_ms,
        total_ms=_ms_since(started),
    )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# -- check callback setup --------------------------------------------------------------

Status = Literal["ok", "problem", "info"]


@dataclass(frozen=True)
class Finding:
    status: Status
    title: str
    detail: str = ""


@dataclass(frozen=True)
class Probe:
    """One request as the platform would send it, and how to judge our answer."""

    description: str
    method: str
    query: str
    body: bytes
    content_type: str
    headers: dict[str, str]
    #: what is wrong with the body of a 200 answer, in plain words ("" if it is what the
    #: platform expects); refusals are explained from their status (see _refusal)
    judge: Callable[[bytes], str]


@dataclass(frozen=True)
class HandshakeCheck:
    #: problems with the stored credentials that make the handshake fail for sure
    settings_problems: Callable[[Bot], list[str]]
    #: notes that are not problems (an optional setting left empty, ...)
    settings_notes: Callable[[Bot], list[str]]
    build: Callable[[Bot], Probe]
    #: what to re-check when our endpoint refuses the signature or cannot decrypt
    credential_hint: str


@dataclass
class CallbackCheck:
    url: str
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.status == "problem" for f in self.findings)


def _wecom_problems(bot: Bot) -> list[str]:
    problems = []
    if not bot.app_id:
        problems.append("App ID is empty. For WeCom it holds the CorpID (企业ID), under My Company → Company Info.")
    if not str(bot.token):
        problems.append(
            "Token is empty. Copy it from the app's Receive Messages → Set API Receive page (接收消息 → 设置API接收)."
        )
    key = str(bot.encoding_aes_key)
    if not key:
        problems.append("EncodingAESKey is empty. Copy it from the same page: 43 letters and digits.")
    else:
        try:
            WXBizMsgCrypt(key, str(bot.app_id))
        except WXBizMsgCryptError as exc:
            problems.append(f"EncodingAESKey is not usable: {exc}. Copy it again from WeCom (43 characters).")
    return problems


def _wecom_probe(bot: Bot) -> Probe:
    echo = f"switchboard-check-{secrets.token_hex(8)}"
    echostr = WXBizMsgCrypt(str(bot.encoding_aes_key), str(bot.app_id)).encrypt(echo)
    timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
    query = urlencode(
        {
            "msg_signature": wx_signature(str(bot.token), timestamp, nonce, echostr),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr,
        }
    )

    def judge(body: bytes) -> str:
        if body == echo.encode():
            return ""
        return (
            f"The endpoint answered {body[:80]!r}, but WeCom accepts only the bare decrypted echostr "
            f"({echo!r}): no quotes, JSON, HTML or newline. Something between WeCom and Switchboard "
            "(a proxy, an error page) changes the answer."
        )

    return Probe(
        description="a GET with msg_signature, timestamp, nonce and an encrypted echostr, as WeCom sends "
        "when you save the URL",
        method="GET",
        query=query,
        body=b"",
        content_type="text/plain",
        headers={},
        judge=judge,
    )


def _feishu_problems(bot: Bot) -> list[str]:
    if not str(bot.token):
        return [
            "Token is empty. For Feishu it holds the Verification Token, from Events & Callbacks → Encryption Strategy."
        ]
    return []


def _feishu_notes(bot: Bot) -> list[str]:
    if not str(bot.encoding_aes_key):
        return [
            "No Encrypt Key is stored, so Feishu sends events as plain JSON without a signature. Setting "
            "one (Events & Callbacks → Encryption Strategy, then the bot's EncodingAESKey field) is safer."
        ]
    return []


def _feishu_probe(bot: Bot) -> Probe:
    challenge = f"switchboard-check-{secrets.token_hex(8)}"
    payload = json.dumps({"challenge": challenge, "token": str(bot.token), "type": "url_verification"})
    encrypt_key = str(bot.encoding_aes_key)
    headers: dict[str, str] = {}
    if encrypt_key:
        body = json.dumps({"encrypt": feishu_crypto.encrypt(payload, encrypt_key)}).encode()
        timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
        headers = {
            "X-Lark-Request-Timestamp": timestamp,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": feishu_crypto.signature(timestamp, nonce, encrypt_key, body),
        }
    else:
        body = payload.encode()

    def judge(body: bytes) -> str:
        try:
            answered = json.loads(body)
        except ValueError:
            answered = None
        if isinstance(answered, dict) and answered.get("challenge") == challenge:
            return ""
        return (
            f'The endpoint answered {body[:80]!r}, but Feishu expects the JSON {{"challenge": "..."}} '
            "with the challenge it sent. Something between Feishu and Switchboard changes the answer."
        )

    return Probe(
        description="a POST with a url_verification challenge"
        + (", encrypted with the Encrypt Key and signed" if encrypt_key else " in plain JSON")
        + ", as Feishu sends when you save the Request URL",
        method="POST",
        query="",
        body=body,
        content_type="application/json; charset=utf-8",
        headers=headers,
        judge=judge,
    )


HANDSHAKE_CHECKS: dict[str, HandshakeCheck] = {
    Platform.WECOM: HandshakeCheck(
        settings_problems=_wecom_problems,
        settings_notes=lambda bot: [],
        build=_wecom_probe,
        credential_hint="Copy the Token and EncodingAESKey from WeCom again, and check that App ID is the "
        "CorpID of the company the app belongs to.",
    ),
    Platform.FEISHU: HandshakeCheck(
        settings_problems=_feishu_problems,
        settings_notes=_feishu_notes,
        build=_feishu_probe,
        credential_hint="Copy the Verification Token (Token field) and the Encrypt Key (EncodingAESKey field) "
        "from Feishu's Events & Callbacks page again.",
    ),
}


def _refusal(status: int, body: bytes, check: HandshakeCheck) -> str:
    """Our endpoint's refusal (see channels_app.views) in plain words."""
    reason = body.decode("utf-8", "replace").strip()
    if status == 404:
        return "The endpoint does not know this bot: it is disabled. Enable it, save, and check again."
    if status in (401, 403) and reason == "bad signature":
        return f"The endpoint refused the signature or could not decrypt the request. {check.credential_hint}"
    if status == 401 and reason == "stale timestamp":
        return (
            "The endpoint found the request's time too far from this server's clock: this server's clock "
            "is wrong. Turn on time synchronisation (timedatectl set-ntp true)."
        )
    if status == 403:
        return f"The endpoint refused the request ({reason}): check the bot's source IP allowlist."
    if status == 400:
        return f"The endpoint could not read the request ({reason}). See the server log for the details."
    if status >= 500:
        return f"The endpoint failed with HTTP {status}: see the server log for the error."
    return f"The endpoint answered HTTP {status} ({reason[:80]})."


def _source_address(bot: Bot) -> str:
    """An address the bot's allowlist accepts, so the check tests credentials, not the
    allowlist (which is about where the platform calls from, not about us)."""
    if bot.allowed_ips:
        return str(ipaddress.ip_network(bot.allowed_ips[0], strict=False).network_address)
    return "127.0.0.1"


def _send(bot: Bot, probe: Probe, request: HttpRequest) -> tuple[int, bytes]:
    client = Client(raise_request_exception=False, REMOTE_ADDR=_source_address(bot))
    path = f"{bot.callback_path}?{probe.query}" if probe.query else bot.callback_path
    # A copy of the context: the inner request's audit context must not replace this one's.
    response = contextvars.copy_context().run(
        client.generic,
        probe.method,
        path,
        probe.body,
        content_type=probe.content_type,
        secure=request.is_secure(),
        headers={**probe.headers, "Host": request.get_host()},
    )
    return response.status_code, response.content


def check_callback(bot: Bot, request: HttpRequest) -> CallbackCheck:
    url = request.build_absolute_uri(bot.callback_path)
    result = CallbackCheck(url=url, findings=[])
    add = result.findings.append
    label = Platform(bot.platform).label if bot.platform in Platform.values else bot.platform
    check = HANDSHAKE_CHECKS.get(bot.platform)
    if adapter_for(bot.platform) is None:
        add(Finding("problem", f"Switchboard has no adapter for {label} yet, so its callbacks are refused."))
        return result
    if not bot.enabled:
        add(Finding("problem", "The bot is disabled: its callback URL answers 404 until you enable it."))
    if check is None:
        add(
            Finding(
                "info",
                f"There is no handshake check for {label} yet.",
                "Paste the callback URL into the platform and watch the delivery log for its messages.",
            )
        )
        return result

    problems = check.settings_problems(bot)
    for problem in problems:
        add(Finding("problem", problem))
    for note in check.settings_notes(bot):
        add(Finding("info", note))
    if bot.allowed_ips:
        add(
            Finding(
                "info",
                f"Only callbacks from {', '.join(bot.allowed_ips)} are accepted.",
                f"The check was sent as if from {_source_address(bot)}. If the platform calls from "
                "other addresses, add them to the allowlist or clear it.",
            )
        )
    if problems or not bot.enabled:
        add(Finding("info", "The handshake was not tried: fix the problems above, save, and check again."))
        return result

    probe = check.build(bot)
    status, body = _send(bot, probe, request)
    wrong = probe.judge(body) if status == 200 else _refusal(status, body, check)
    if wrong:
        add(Finding("problem", f"Sent {probe.description}: it failed.", wrong))
    else:
        add(
            Finding(
                "ok",
                f"Sent {probe.description}: answered the way {label} expects.",
                "Paste the callback URL into the platform's console; its own check should pass too.",
            )
        )
    now = datetime.now(UTC)
    add(
        Finding(
            "info",
            f"This server's clock reads {now:%Y-%m-%d %H:%M:%S} UTC.",
            f"Callbacks signed more than {settings.CALLBACK_TIMESTAMP_WINDOW} s away from it are refused. If real "
            "callbacks are refused as stale, compare with a reliable clock and turn on time synchronisation.",
        )
    )
    return result
