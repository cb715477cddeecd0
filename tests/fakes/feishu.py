"""A fake Feishu Open API (tenant_access_token, send and reply), and helpers that build
event callbacks the way Feishu's event subscription sends them.

Run alone: `python -m tests.fakes.feishu --port 8801`; it knows the app
cli_fake_app / fake-app-secret until you add others with `add_app`.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid as uuid_module
from collections import deque

from channels_app.adapters.feishu import crypto
from tests.fakes.server import FakeServer, Recorded, Response, serve_forever

TOKEN_LIFETIME = 7200
# Feishu hands out a new tenant_access_token only when the current one has less left.
TOKEN_RENEW_BELOW = 1800
# Sends with the same `uuid` are delivered once within this window.
UUID_WINDOW = 3600
UUID_MAX = 50
TEXT_BODY_MAX_BYTES = 150 * 1024
RECEIVE_ID_TYPES = {"chat_id", "open_id", "user_id", "union_id", "email"}


def _error(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"code": code, "msg": msg}, headers or {})


class FakeFeishu(FakeServer):
    name = "fake-feishu"
    routes = [
        ("POST", r"/open-apis/auth/v3/tenant_access_token/internal", "tenant_access_token"),
        ("POST", r"/open-apis/im/v1/messages/(?P<message_id>[^/]+)/reply", "reply_message"),
        ("POST", r"/open-apis/im/v1/messages", "create_message"),
    ]

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.apps: dict[str, str] = {"cli_fake_app": "fake-app-secret"}
        self.sent: list[dict] = []
        # token -> (app_id, expires at); current token per app
        self._tokens: dict[str, tuple[str, float]] = {}
        self._current: dict[str, str] = {}
        self._by_uuid: dict[tuple[str, str], tuple[float, dict]] = {}
        self._rate_limits: deque[float] = deque()
        self._state = threading.Lock()
        #: chats the bot has been removed from: sends there get 230002
        self.chats_without_bot: set[str] = set()
        #: message id -> chat id of inbound messages, so a reply knows its chat
        self.message_chats: dict[str, str] = {}

    # -- scripting ---------------------------------------------------------------------

    def add_app(self, app_id: str, app_secret: str) -> None:
        with self._state:
            self.apps[app_id] = app_secret

    def expire_tokens(self) -> None:
        """Every token issued so far stops working, as when Feishu revokes them early."""
        with self._state:
            self._tokens.clear()
            self._current.clear()

    def rate_limit(self, times: int = 1, reset_seconds: float = 2.0) -> None:
        """The next `times` sends get the gateway's HTTP 429 with x-ogw-ratelimit-reset."""
        with self._state:
            self._rate_limits.extend([reset_seconds] * times)

    def tokens_issued(self) -> int:
        return sum(1 for r in self.received(r"/tenant_access_token/") if r.method == "POST")

    # -- routes ------------------------------------------------------------------------

    def tenant_access_token(self, record: Recorded, match: re.Match) -> Response:
        body = record.json()
        if not isinstance(body, dict) or not body.get("app_id") or not body.get("app_secret"):
            return _error(400, 10003, "invalid param")
        now = time.time()
        with self._state:
            if self.apps.get(body["app_id"]) is None:
                return _error(400, 10003, "invalid param: app_id not found")
            if self.apps[body["app_id"]] != body["app_secret"]:
                return _error(400, 10014, "app secret invalid")
            token = self._current.get(body["app_id"])
            if token is None or self._tokens[token][1] - now < TOKEN_RENEW_BELOW:
                token = f"t-{secrets.token_hex(20)}"
                self._tokens[token] = (body["app_id"], now + TOKEN_LIFETIME)
                self._current[body["app_id"]] = token
            expire = int(self._tokens[token][1] - now)
        return Response(200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire})

    def reply_message(self, record: Recorded, match: re.Match) -> Response:
        message_id = match["message_id"]
        return self._deliver(record, chat_id=self.message_chats.get(message_id), reply_to=message_id, receive=None)

    def create_message(self, record: Recorded, match: re.Match) -> Response:
        receive_id_type = (record.query.get("receive_id_type") or [""])[0]
        if receive_id_type not in RECEIVE_ID_TYPES:
            return _error(400, 99992402, "field validation failed: receive_id_type")
        body = record.json()
        receive_id = body.get("receive_id") if isinstance(body, dict) else None
        if not isinstance(receive_id, str) or not receive_id:
            return _error(400, 99992402, "field validation failed: receive_id is required")
        chat_id = receive_id if receive_id_type == "chat_id" else None
        return self._deliver(record, chat_id=chat_id, reply_to=None, receive=(receive_id_type, receive_id))

    # -- the shared send path ----------------------------------------------------------

    def _app_of(self, record: Recorded) -> str | Response:
        authorization = record.headers.get("authorization", "")
        if not authorization.startswith("Bearer ") or not authorization[7:]:
            return _error(400, 99991661, "Missing access token for authorization")
        entry = self._tokens.get(authorization[7:])
        if entry is None or entry[1] < time.time():
            return _error(400, 99991663, "Invalid access token for authorization")
        return entry[0]

    def _deliver(self, record: Recorded, chat_id: str | None, reply_to: str | None, receive) -> Response:
        with self._state:
            app_id = self._app_of(record)
            if isinstance(app_id, Response):
                return app_id
            if self._rate_limits:
                reset = self._rate_limits.popleft()
                return _error(
                    429,
                    99991400,
                    "request trigger frequency limit",
                    {"x-ogw-ratelimit-limit": "50", "x-ogw-ratelimit-reset": f"{reset:g}"},
                )
        body = record.json()
        if not isinstance(body, dict) or body.get("msg_type") != "text":
            return _error(400, 230001, "invalid request: this fake speaks msg_type text only")
        content = body.get("content")
        try:
            text = json.loads(content)["text"] if isinstance(content, str) else None
        except (ValueError, KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            return _error(400, 230001, 'invalid content: want a JSON string like {"text":"..."}')
        if len(record.body) > TEXT_BODY_MAX_BYTES:
            return _error(400, 230025, "The length of the message content reaches its limit.")
        key = body.get("uuid")
        if key is not None and (not isinstance(key, str) or len(key) > UUID_MAX):
            return _error(400, 99992402, f"field validation failed: uuid longer than {UUID_MAX}")
        if chat_id is not None and chat_id in self.chats_without_bot:
            return _error(400, 230002, "Bot/User can NOT be out of the chat.")
        now = time.time()
        with self._state:
            if key:
                earlier = self._by_uuid.get((app_id, key))
                if earlier is not None and now - earlier[0] < UUID_WINDOW:
                    return Response(200, earlier[1])  # the first result; not delivered again
            message_id = f"om_{secrets.token_hex(16)}"
            self.sent.append(
                {
                    "message_id": message_id,
                    "app_id": app_id,
                    "chat_id": chat_id,
                    "reply_to": reply_to,
                    "receive_id_type": receive[0] if receive else None,
                    "receive_id": receive[1] if receive else None,
                    "text": text,
                    "uuid": key,
                    "at": now,
                }
            )
            answer = {
                "code": 0,
                "msg": "success",
                "data": {
                    "message_id": message_id,
                    "root_id": reply_to or "",
                    "parent_id": reply_to or "",
                    "msg_type": "text",
                    "create_time": str(int(now * 1000)),
                    "chat_id": chat_id or "",
                    "sender": {"id": app_id, "id_type": "app_id", "sender_type": "app"},
                    "body": {"content": content},
                },
            }
            if key:
                self._by_uuid[(app_id, key)] = (now, answer)
        return Response(200, answer)


# -- building callbacks the way Feishu sends them --------------------------------------


def feishu_event(
    app_id: str,
    verification_token: str,
    message_id: str,
    chat_id: str,
    chat_type: str,
    sender_open_id: str,
    text: str,
    mentions: list[dict] | None = None,
) -> dict:
    """A v2 im.message.receive_v1 event. `mentions` are dicts with open_id and name (and
    optionally key); write their keys ("@_user_1", ... in order) into `text` yourself."""
    now_ms = str(int(time.time() * 1000))
    return {
        "schema": "2.0",
        "header": {
            "event_id": uuid_module.uuid4().hex,
            "event_type": "im.message.receive_v1",
            "create_time": now_ms,
            "token": verification_token,
            "app_id": app_id,
            "tenant_key": "2ca1d211f64f6438",
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": sender_open_id, "union_id": f"on_{sender_open_id[3:]}", "user_id": None},
                "sender_type": "user",
                "tenant_key": "2ca1d211f64f6438",
            },
            "message": {
                "message_id": message_id,
                "root_id": "",
                "parent_id": "",
                "create_time": now_ms,
                "update_time": now_ms,
                "chat_id": chat_id,
                "chat_type": chat_type,
                "message_type": "text",
                "content": json.dumps({"text": text}, ensure_ascii=False),
                "mentions": [
                    {
                        "key": m.get("key", f"@_user_{n}"),
                        "id": {"open_id": m["open_id"], "union_id": f"on_{m['open_id'][3:]}", "user_id": None},
                        "name": m["name"],
                        "tenant_key": "2ca1d211f64f6438",
                    }
                    for n, m in enumerate(mentions or [], start=1)
                ],
            },
        },
    }


def feishu_callback(
    event: dict,
    encrypt_key: str | None = None,
    timestamp: str | int | None = None,
    nonce: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """(headers, body) of the POST Feishu makes for `event`: encrypted and signed when
    the app has an Encrypt Key, plain JSON otherwise."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if not encrypt_key:
        return headers, json.dumps(event, ensure_ascii=False).encode("utf-8")
    body = json.dumps({"encrypt": crypto.encrypt(json.dumps(event, ensure_ascii=False), encrypt_key)}).encode()
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_hex(8) if nonce is None else nonce
    headers.update(
        {
            "X-Lark-Request-Timestamp": timestamp,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": crypto.signature(timestamp, nonce, encrypt_key, body),
        }
    )
    return headers, body


if __name__ == "__main__":
    serve_forever(FakeFeishu, "A fake Feishu Open API: tenant_access_token, im/v1 send and reply.")
