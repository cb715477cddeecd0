"""A fake Slack Web API (chat.postMessage) and builders for signed Events API callbacks,
shared by the tests and bench/.

Run alone: `python -m tests.fakes.slack --port 8701`; it accepts the bot token
xoxb-fake-token until you add others with `add_token`.

Like Slack, it answers API errors with HTTP 200 and `{"ok": false, "error": "…"}`, rate
limits with HTTP 429 and Retry-After, and truncates text beyond 40,000 characters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import deque
from urllib.parse import parse_qs

from tests.fakes.server import FakeServer, Recorded, Response, serve_forever

DEFAULT_BOT_TOKEN = "xoxb-fake-token"
TEXT_TRUNCATED_AT = 40_000
_THREAD_TS = re.compile(r"[0-9]{10}\.[0-9]{6}")


def _error(error: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"ok": False, "error": error}, headers or {})


class FakeSlack(FakeServer):
    name = "fake-slack"
    routes = [("POST", r"/api/chat\.postMessage", "post_message")]

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.tokens: set[str] = {DEFAULT_BOT_TOKEN}
        self.revoked_tokens: set[str] = set()
        #: channels the bot is not a member of: posts there get not_in_channel
        self.channels_without_bot: set[str] = set()
        #: every message posted, as Slack stored it
        self.sent: list[dict] = []
        self._rate_limits: deque[int] = deque()
        self._state = threading.Lock()

    # -- scripting ---------------------------------------------------------------------

    def add_token(self, token: str) -> None:
        with self._state:
            self.tokens.add(token)

    def revoke(self, token: str) -> None:
        with self._state:
            self.revoked_tokens.add(token)

    def rate_limit(self, times: int = 1, retry_after: int = 1) -> None:
        """The next `times` posts get HTTP 429 with this Retry-After, as Slack's limiter answers."""
        with self._state:
            self._rate_limits.extend([retry_after] * times)

    # -- routes ------------------------------------------------------------------------

    @staticmethod
    def _arguments(record: Recorded) -> dict:
        """Slack takes write methods' arguments as JSON or as a form."""
        content_type = record.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            body = record.json()
            if not isinstance(body, dict):
                raise ValueError("the JSON body is not an object")
            return body
        return {name: values[-1] for name, values in parse_qs(record.body.decode()).items()}

    def post_message(self, record: Recorded, match: re.Match) -> Response:
        authorization = record.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        with self._state:
            if not token:
                return _error("not_authed")
            if token in self.revoked_tokens:
                return _error("token_revoked")
            if token not in self.tokens:
                return _error("invalid_auth")
            if self._rate_limits:
                return _error("ratelimited", 429, {"Retry-After": str(self._rate_limits.popleft())})
        try:
            arguments = self._arguments(record)
        except (ValueError, UnicodeDecodeError):
            return _error("invalid_json")
        channel, text, thread_ts = arguments.get("channel"), arguments.get("text"), arguments.get("thread_ts")
        if not isinstance(channel, str) or not channel:
            return _error("channel_not_found")
        if not isinstance(text, str) or not text:
            return _error("no_text")
        if thread_ts is not None and (not isinstance(thread_ts, str) or not _THREAD_TS.fullmatch(thread_ts)):
            return _error("invalid_thread_ts")
        if channel in self.channels_without_bot:
            return _error("not_in_channel")
        with self._state:
            ts = f"{time.time():.6f}"
            message = {
                "channel": channel,
                "text": text[:TEXT_TRUNCATED_AT],
                "thread_ts": thread_ts,
                "ts": ts,
                "truncated": len(text) > TEXT_TRUNCATED_AT,
                "token": token,
            }
            self.sent.append(message)
        return Response(
            200,
            {
                "ok": True,
                "channel": channel,
                "ts": ts,
                "message": {
                    "type": "message",
                    "subtype": "bot_message",
                    "text": message["text"],
                    "ts": ts,
                    "bot_id": "B0FAKEBOT",
                    **({"thread_ts": thread_ts} if thread_ts else {}),
                },
            },
        )


# -- building callbacks the way Slack's Events API sends them -----------------------------


def slack_signature(signing_secret: str, timestamp: str, body: bytes) -> str:
    """Slack's side of the signature, written from its documentation (not our adapter's code)."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def slack_event(
    event_type: str,
    channel: str,
    user: str,
    text: str,
    *,
    ts: str | None = None,
    thread_ts: str | None = None,
    channel_type: str | None = None,
    event_id: str | None = None,
    bot_user_id: str = "U0FAKEBOT1",
    **event_fields,
) -> dict:
    """An event_callback envelope around one `message` or `app_mention` event."""
    ts = ts or f"{time.time():.6f}"
    event = {
        "type": event_type,
        "text": text,
        "user": user,
        "ts": ts,
        "team": "T0FAKETEAM",
        "channel": channel,
        "event_ts": ts,
        **event_fields,
    }
    if event_type == "message" or channel_type:
        event["channel_type"] = channel_type or ("im" if channel.startswith("D") else "channel")
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {
        "token": "fake-legacy-verification-token",
        "team_id": "T0FAKETEAM",
        "api_app_id": "A0FAKEAPP1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(float(ts)),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": "T0FAKETEAM",
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }


def slack_callback(
    payload: dict | bytes,
    signing_secret: str,
    timestamp: str | int | None = None,
    retry_num: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """(headers, body) of the POST Slack makes for `payload`; a retry carries
    X-Slack-Retry-Num and is signed anew, with its own timestamp."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": slack_signature(signing_secret, timestamp, body),
    }
    if retry_num is not None:
        headers.update({"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"})
    return headers, body


if __name__ == "__main__":
    serve_forever(FakeSlack, "A fake Slack Web API: chat.postMessage.")
