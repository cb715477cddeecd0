"""A fake integrator for the generic webhook: a receiver of Switchboard's signed replies,
written the way channels_app/adapters/webhook/README.md tells integrators to write one,
and builders for the signed messages an integrator sends in.

Run alone: `python -m tests.fakes.webhook --port 8901`; it verifies replies with the
secret fake-shared-secret at POST /switchboard/replies.

The receiver refuses what a careful integrator refuses (401 for a bad or stale
signature, 400 for a body it cannot read) and delivers each reply id once: a repeated
Idempotency-Key is answered 200 again without a second delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time

from tests.fakes.server import FakeServer, Recorded, Response, serve_forever

DEFAULT_SECRET = "fake-shared-secret"
REPLY_PATH = "/switchboard/replies"
WINDOW_SECONDS = 300
REPLY_FIELDS = {"id": str, "in_reply_to": str, "conversation": str, "user": str, "text": str, "part": int, "parts": int}


def switchboard_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The integrator's side of the signature, as the README gives it."""
    message = timestamp.encode() + b"." + body
    return "v1=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


class FakeWebhookReceiver(FakeServer):
    name = "fake-webhook-receiver"
    routes = [("POST", re.escape(REPLY_PATH), "receive_reply")]

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret: str = DEFAULT_SECRET) -> None:
        super().__init__(host, port)
        self.secret = secret
        #: each reply delivered, once per id
        self.delivered: list[dict] = []
        self._seen: set[str] = set()
        self._state = threading.Lock()

    @property
    def outbound_url(self) -> str:
        return self.url + REPLY_PATH

    def receive_reply(self, record: Recorded, match: re.Match) -> Response:
        timestamp = record.headers.get("x-switchboard-timestamp", "")
        given = record.headers.get("x-switchboard-signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > WINDOW_SECONDS:
            return Response(401, {"error": "missing or stale X-Switchboard-Timestamp"})
        expected = switchboard_signature(self.secret, timestamp, record.body)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return Response(401, {"error": "bad X-Switchboard-Signature"})
        try:
            reply = json.loads(record.body)
        except ValueError:
            return Response(400, {"error": "the body is not JSON"})
        wrong = [
            name
            for name, kind in REPLY_FIELDS.items()
            if not isinstance(reply, dict) or not isinstance(reply.get(name), kind)
        ]
        if wrong:
            return Response(400, {"error": f"fields missing or of the wrong type: {', '.join(wrong)}"})
        if record.headers.get("idempotency-key") != reply["id"]:
            return Response(400, {"error": "Idempotency-Key must equal the reply's id"})
        with self._state:
            if reply["id"] in self._seen:
                return Response(200, {"status": "duplicate"})
            self._seen.add(reply["id"])
            self.delivered.append(reply)
        return Response(200, {"status": "delivered"})


def webhook_message(message_id: str, conversation: str, user: str, text: str, **fields) -> dict:
    return {"id": message_id, "conversation": conversation, "user": user, "text": text, **fields}


def webhook_callback(
    message: dict | bytes,
    secret: str,
    timestamp: str | int | None = None,
) -> tuple[dict[str, str], bytes]:
    """(headers, body) of an integrator's signed POST to /callback/webhook/<bot-uuid>/."""
    body = message if isinstance(message, bytes) else json.dumps(message, ensure_ascii=False).encode("utf-8")
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "X-Switchboard-Timestamp": timestamp,
        "X-Switchboard-Signature": switchboard_signature(secret, timestamp, body),
    }, body


if __name__ == "__main__":
    serve_forever(FakeWebhookReceiver, "A fake webhook integrator receiving Switchboard's signed replies.")
