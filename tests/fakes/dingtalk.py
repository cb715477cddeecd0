"""A fake DingTalk: the v1.0 accessToken and robot send APIs, the per-conversation
sessionWebhooks the robot callbacks carry, and builders for signed robot callbacks.

Run alone: `python -m tests.fakes.dingtalk --port 8701`; it knows the app
dingfakeappkey0001 / fake-app-secret (robotCode = the AppKey) until you add others.
Point a bot's API base URL at it; `open_session()` gives sessionWebhooks on the same
host, which the adapter accepts because they are on the bot's API host.

Wire format as documented: the v1.0 API answers errors with an HTTP status and
{"code", "message", "requestid"}; sessionWebhooks answer {"errcode", "errmsg"} with
HTTP 200. DingTalk does not document the errcode of an expired sessionWebhook; the fake
uses 300001 (any refusal other than "busy" makes the adapter use the robot API).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid as uuid_module

from tests.fakes.server import FakeServer, Recorded, Response, serve_forever

TOKEN_LIFETIME = 7200
SESSION_LIFETIME_MS = 90 * 60 * 1000
MSG_PARAM_MAX_BYTES = 15_000
WEBHOOK_BODY_MAX_BYTES = 20_000
SESSION_EXPIRED_ERRCODE = 300001
DEFAULT_APP_KEY = "dingfakeappkey0001"
DEFAULT_APP_SECRET = "fake-app-secret"


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"code": code, "message": message, "requestid": uuid_module.uuid4().hex.upper()})


def _text_of(msg_key: object, msg_param: object) -> str | None:
    if msg_key != "sampleText" or not isinstance(msg_param, str):
        return None
    try:
        content = json.loads(msg_param).get("content")
    except (ValueError, AttributeError):
        return None
    return content if isinstance(content, str) else None


class FakeDingTalk(FakeServer):
    name = "fake-dingtalk"
    routes = [
        ("POST", r"/v1.0/oauth2/accessToken", "access_token"),
        ("POST", r"/v1.0/robot/oToMessages/batchSend", "one_to_one_send"),
        ("POST", r"/v1.0/robot/groupMessages/send", "group_send"),
        ("POST", r"/robot/sendBySession", "send_by_session"),
    ]

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        #: AppKey -> (AppSecret, robotCode)
        self.apps: dict[str, tuple[str, str]] = {DEFAULT_APP_KEY: (DEFAULT_APP_SECRET, DEFAULT_APP_KEY)}
        #: every delivered message: via ("session", "oto", "group"), conversation, user_ids, text
        self.sent: list[dict] = []
        #: staff ids that exist; None accepts any
        self.staff: set[str] | None = None
        #: groups the robot is not in
        self.groups_without_robot: set[str] = set()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._current: dict[str, str] = {}
        self._sessions: dict[str, dict] = {}
        self._flow_controlled = 0
        self._state = threading.Lock()

    # -- scripting ---------------------------------------------------------------------

    def add_app(self, app_key: str, app_secret: str, robot_code: str | None = None) -> None:
        with self._state:
            self.apps[app_key] = (app_secret, robot_code or app_key)

    def open_session(
        self, conversation_id: str, conversation_type: str = "1", lifetime_ms: int = SESSION_LIFETIME_MS
    ) -> tuple[str, int]:
        """A sessionWebhook for a conversation, as a callback carries it: (url, expires at ms)."""
        session = secrets.token_hex(16)
        expires = int(time.time() * 1000) + lifetime_ms
        with self._state:
            self._sessions[session] = {
                "conversation_id": conversation_id,
                "conversation_type": conversation_type,
                "expires_ms": expires,
            }
        return f"{self.url}/robot/sendBySession?session={session}", expires

    def expire_sessions(self) -> None:
        """Every sessionWebhook stops working now, whatever its advertised expiry."""
        with self._state:
            for session in self._sessions.values():
                session["expires_ms"] = 0

    def expire_tokens(self) -> None:
        with self._state:
            self._tokens.clear()
            self._current.clear()

    def flow_control(self, times: int = 1) -> None:
        """The next `times` one-to-one sends come back with the user in flowControlledStaffIdList."""
        with self._state:
            self._flow_controlled += times

    def token_requests(self) -> int:
        return len(self.received(r"/oauth2/accessToken$"))

    # -- routes ------------------------------------------------------------------------

    def access_token(self, record: Recorded, match: re.Match) -> Response:
        body = record.json()
        if not isinstance(body, dict) or not body.get("appKey") or not body.get("appSecret"):
            return _error(400, "MissingappKey", "appKey and appSecret are required")
        now = time.time()
        with self._state:
            app = self.apps.get(body["appKey"])
            if app is None or app[0] != body["appSecret"]:
                return _error(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret")
            token = self._current.get(body["appKey"])
            # Within its lifetime DingTalk hands out the same token again.
            if token is None or self._tokens[token][1] <= now:
                token = secrets.token_hex(16)
                self._tokens[token] = (body["appKey"], now + TOKEN_LIFETIME)
                self._current[body["appKey"]] = token
            expire_in = int(self._tokens[token][1] - now)
        return Response(200, {"accessToken": token, "expireIn": expire_in})

    def _robot_caller(self, record: Recorded, body: object) -> tuple[str, str] | Response:
        """(app key, robot code) of a robot API call, or the error DingTalk answers."""
        entry = self._tokens.get(record.headers.get("x-acs-dingtalk-access-token", ""))
        if entry is None or entry[1] < time.time():
            return _error(401, "InvalidAuthentication", "不合法的access_token")
        if not isinstance(body, dict) or _text_of(body.get("msgKey"), body.get("msgParam")) is None:
            return _error(400, "invalidParameter.msgParam.invalid", "msgKey must be sampleText with a JSON msgParam")
        if len(body["msgParam"].encode("utf-8")) > MSG_PARAM_MAX_BYTES:
            return _error(400, "invalidParameter.msgParam.invalid", "msgParam is longer than 15000 bytes")
        robot_code = self.apps[entry[0]][1]
        if body.get("robotCode") != robot_code:
            return _error(400, "invalidParameter.robotCode.auth", "robotCode does not belong to this appKey")
        return entry[0], robot_code

    def one_to_one_send(self, record: Recorded, match: re.Match) -> Response:
        body = record.json()
        caller = self._robot_caller(record, body)
        if isinstance(caller, Response):
            return caller
        user_ids = body.get("userIds")
        if not isinstance(user_ids, list) or not user_ids or len(user_ids) > 20:
            return _error(400, "invalidParameter.userIds.empty", "userIds must list 1 to 20 users")
        with self._state:
            limited = user_ids if self._flow_controlled else []
            self._flow_controlled = max(self._flow_controlled - 1, 0)
        invalid = [u for u in user_ids if self.staff is not None and u not in self.staff]
        delivered = [u for u in user_ids if u not in invalid and u not in limited]
        if delivered:
            self.sent.append(
                {
                    "via": "oto",
                    "conversation_id": None,
                    "user_ids": delivered,
                    "text": _text_of(body["msgKey"], body["msgParam"]),
                    "at": time.time(),
                }
            )
        return Response(
            200,
            {
                "processQueryKey": secrets.token_urlsafe(24),
                "invalidStaffIdList": invalid,
                "flowControlledStaffIdList": limited,
            },
        )

    def group_send(self, record: Recorded, match: re.Match) -> Response:
        body = record.json()
        caller = self._robot_caller(record, body)
        if isinstance(caller, Response):
            return caller
        conversation = body.get("openConversationId")
        if not isinstance(conversation, str) or not conversation:
            return _error(400, "invalid.openConversationId", "无效的openConversationId")
        if conversation in self.groups_without_robot:
            return _error(400, "invalidParameter.robotCode.notExsit", "机器人不存在")
        self.sent.append(
            {
                "via": "group",
                "conversation_id": conversation,
                "user_ids": None,
                "text": _text_of(body["msgKey"], body["msgParam"]),
                "at": time.time(),
            }
        )
        return Response(200, {"processQueryKey": secrets.token_urlsafe(24)})

    def send_by_session(self, record: Recorded, match: re.Match) -> Response:
        session = self._sessions.get((record.query.get("session") or [""])[0])
        if session is None or session["expires_ms"] < time.time() * 1000:
            return Response(200, {"errcode": SESSION_EXPIRED_ERRCODE, "errmsg": "session not exist or expired"})
        if len(record.body) > WEBHOOK_BODY_MAX_BYTES:
            return Response(200, {"errcode": 460101, "errmsg": "message too long"})
        body = record.json()
        text = _dict_get(body, "text", "content")
        if not isinstance(body, dict) or body.get("msgtype") != "text" or not isinstance(text, str):
            return Response(200, {"errcode": 400105, "errmsg": "this fake speaks msgtype text only"})
        self.sent.append(
            {
                "via": "session",
                "conversation_id": session["conversation_id"],
                "user_ids": None,
                "text": text,
                "at": time.time(),
            }
        )
        return Response(200, {"errcode": 0, "errmsg": "ok"})


def _dict_get(value: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# -- building callbacks the way DingTalk sends them -------------------------------------


def dingtalk_message(
    text: str,
    *,
    msg_id: str | None = None,
    conversation_type: str = "1",
    conversation_id: str = "cidp2pFakeConversation==",
    sender_staff_id: str | None = "manager4220",
    robot_code: str = DEFAULT_APP_KEY,
    in_at_list: bool | None = None,
    session: tuple[str, int] | None = None,
) -> dict:
    """A robot callback body for a text message. `session` is (sessionWebhook, expiry
    in ms), e.g. from FakeDingTalk.open_session()."""
    webhook, expires = session or (
        "https://oapi.dingtalk.com/robot/sendBySession?session=" + secrets.token_hex(16),
        int(time.time() * 1000) + SESSION_LIFETIME_MS,
    )
    body = {
        "conversationId": conversation_id,
        "chatbotCorpId": "dingfakecorp0000001",
        "chatbotUserId": "$:LWCP_v1:$FakeChatbotUserId0000000000000",
        "msgId": msg_id or f"msg{secrets.token_hex(12)}",
        "senderNick": "Zhang San",
        "isAdmin": False,
        "sessionWebhookExpiredTime": expires,
        "createAt": int(time.time() * 1000),
        "senderCorpId": "dingfakecorp0000001",
        "conversationType": conversation_type,
        "senderId": "$:LWCP_v1:$FakeSenderId00000000000000000",
        "sessionWebhook": webhook,
        "text": {"content": text},
        "robotCode": robot_code,
        "msgtype": "text",
    }
    if sender_staff_id is not None:
        body["senderStaffId"] = sender_staff_id
    if conversation_type == "2":
        body.update(
            conversationTitle="Fake group",
            isInAtList=bool(in_at_list),
            atUsers=[{"dingtalkId": body["chatbotUserId"]}] if in_at_list else [],
        )
    return body


def dingtalk_sign(timestamp: str, app_secret: str) -> str:
    """DingTalk's `sign` header, computed here rather than borrowed from the adapter, so
    that the tests check the adapter against the documented formula."""
    digest = hmac.new(app_secret.encode(), f"{timestamp}\n{app_secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def dingtalk_callback(message: dict, app_secret: str, timestamp: int | str | None = None) -> tuple[dict, bytes]:
    """(headers, body) of the POST DingTalk makes: the timestamp in ms and its sign."""
    timestamp = str(int(time.time() * 1000) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "timestamp": timestamp,
        "sign": dingtalk_sign(timestamp, app_secret),
    }
    return headers, json.dumps(message, ensure_ascii=False).encode("utf-8")


if __name__ == "__main__":
    serve_forever(FakeDingTalk, "A fake DingTalk: v1.0 accessToken, robot send APIs and sessionWebhooks.")
