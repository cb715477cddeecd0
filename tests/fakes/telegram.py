"""A fake Telegram Bot API (getMe, sendMessage, setWebhook, deleteWebhook,
getWebhookInfo) and builders for webhook updates as Telegram posts them.

Run alone: `python -m tests.fakes.telegram --port 8901`; it knows the bot
DEFAULT_TOKEN (@fake_switchboard_bot) until you add others with `add_bot`.

Wire format as documented: every answer is {"ok": true, "result": …} or
{"ok": false, "error_code": N, "description": "…", "parameters"?: {…}}, with the HTTP
status equal to error_code. An unknown token gets 401 Unauthorized.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time

from tests.fakes.server import FakeServer, Recorded, Response, serve_forever

TEXT_LIMIT = 4096
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
WEBHOOK_PORTS = {443, 80, 88, 8443}
DEFAULT_TOKEN = "7000000001:AAFakeFakeFakeFakeFakeFakeFakeFake00"
DEFAULT_USERNAME = "fake_switchboard_bot"


def _error(code: int, description: str, parameters: dict | None = None) -> Response:
    body: dict = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Response(code, body)


def _ok(result: object, description: str | None = None) -> Response:
    body: dict = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return Response(200, body)


class FakeTelegram(FakeServer):
    name = "fake-telegram"
    routes = [("POST", r"/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)", "bot_method")]

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        #: token -> username
        self.bots: dict[str, str] = {DEFAULT_TOKEN: DEFAULT_USERNAME}
        #: every delivered message: bot token's id, chat_id, text, reply_to
        self.sent: list[dict] = []
        #: token -> the webhook as setWebhook left it ({} when none)
        self.webhooks: dict[str, dict] = {}
        #: chats that blocked the bot (403), that do not exist (400), that moved (400 + new id)
        self.blocked_chats: set[int] = set()
        self.unknown_chats: set[int] = set()
        self.migrated_chats: dict[int, int] = {}
        self._rate_limits: list[int] = []
        self._message_ids = itertools.count(5000)
        self._state = threading.Lock()

    # -- scripting ---------------------------------------------------------------------

    def add_bot(self, token: str, username: str) -> None:
        with self._state:
            self.bots[token] = username

    def rate_limit(self, times: int = 1, retry_after: int = 3) -> None:
        """The next `times` sendMessage calls get 429 Too Many Requests."""
        with self._state:
            self._rate_limits.extend([retry_after] * times)

    # -- routes ------------------------------------------------------------------------

    def bot_method(self, record: Recorded, match: re.Match) -> Response:
        token = match["token"]
        if token not in self.bots:
            return _error(401, "Unauthorized")
        handler = getattr(self, f"_method_{match['method'].lower()}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        params = record.json() if record.body else {}
        if not isinstance(params, dict):
            return _error(400, "Bad Request: parameters must be a JSON object")
        return handler(token, params)

    def _bot_user(self, token: str) -> dict:
        return {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": "Switchboard",
            "username": self.bots[token],
        }

    def _method_getme(self, token: str, params: dict) -> Response:
        return _ok(self._bot_user(token))

    def _method_sendmessage(self, token: str, params: dict) -> Response:
        chat_id, text = params.get("chat_id"), params.get("text")
        if not isinstance(chat_id, int | str) or chat_id == "":
            return _error(400, "Bad Request: chat_id is empty")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if len(text) > TEXT_LIMIT:
            return _error(400, "Bad Request: message is too long")
        reply = params.get("reply_parameters")
        if reply is not None and (not isinstance(reply, dict) or not isinstance(reply.get("message_id"), int)):
            return _error(400, "Bad Request: invalid reply parameters specified")
        with self._state:
            if self._rate_limits:
                wait = self._rate_limits.pop(0)
                return _error(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
        if chat_id in self.blocked_chats:
            return _error(403, "Forbidden: bot was blocked by the user")
        if chat_id in self.unknown_chats:
            return _error(400, "Bad Request: chat not found")
        if chat_id in self.migrated_chats:
            return _error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": self.migrated_chats[chat_id]},
            )
        message_id = next(self._message_ids)
        now = int(time.time())
        self.sent.append(
            {
                "bot": token.split(":")[0],
                "chat_id": chat_id,
                "text": text,
                "reply_to": reply.get("message_id") if reply else None,
                "message_id": message_id,
                "at": time.time(),
            }
        )
        result = {
            "message_id": message_id,
            "from": self._bot_user(token),
            "chat": {"id": chat_id, "type": "private" if isinstance(chat_id, int) and chat_id > 0 else "group"},
            "date": now,
            "text": text,
        }
        return _ok(result)

    def _method_setwebhook(self, token: str, params: dict) -> Response:
        url = params.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            return _error(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        port = re.match(r"https://[^/:]+(?::(\d+))?", url)
        if port is None or int(port.group(1) or 443) not in WEBHOOK_PORTS:
            return _error(400, "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")
        secret = params.get("secret_token")
        if secret is not None and (not isinstance(secret, str) or not SECRET_TOKEN.fullmatch(secret)):
            return _error(400, "Bad Request: bad webhook: secret token contains unallowed characters")
        with self._state:
            self.webhooks[token] = {
                "url": url,
                "secret_token": secret,
                "allowed_updates": params.get("allowed_updates"),
                "drop_pending_updates": bool(params.get("drop_pending_updates")),
            }
        return _ok(True, "Webhook was set")

    def _method_deletewebhook(self, token: str, params: dict) -> Response:
        with self._state:
            existed = bool(self.webhooks.get(token))
            self.webhooks[token] = {}
        return _ok(True, "Webhook was deleted" if existed else "Webhook is already deleted")

    def _method_getwebhookinfo(self, token: str, params: dict) -> Response:
        webhook = self.webhooks.get(token) or {}
        return _ok(
            {
                "url": webhook.get("url", ""),
                "has_custom_certificate": False,
                "pending_update_count": 0,
                **({"allowed_updates": webhook["allowed_updates"]} if webhook.get("allowed_updates") else {}),
            }
        )


# -- building updates the way Telegram posts them ---------------------------------------

_update_ids = itertools.count(int(time.time()) % 100_000_000)


def telegram_update(
    text: str | None,
    *,
    chat_id: int = 111111111,
    chat_type: str = "private",
    message_id: int | None = None,
    user_id: int = 111111111,
    entities: list[dict] | None = None,
    reply_to: dict | None = None,
    update_id: int | None = None,
    kind: str = "message",
) -> dict:
    """An update with a `kind` ("message", "edited_message", …) holding a text message.
    Entity offsets are UTF-16 code units, as Telegram counts them; `mention()` computes them."""
    message: dict = {
        "message_id": message_id or secrets.randbelow(10**6) + 1,
        "from": {"id": user_id, "is_bot": False, "first_name": "Ada", "username": "ada_l", "language_code": "en"},
        "chat": {
            "id": chat_id,
            "type": chat_type,
            **({"first_name": "Ada", "username": "ada_l"} if chat_type == "private" else {"title": "Team"}),
        },
        "date": int(time.time()),
    }
    if text is not None:
        message["text"] = text
    if entities:
        message["entities"] = entities
    if reply_to is not None:
        message["reply_to_message"] = reply_to
    return {"update_id": update_id or next(_update_ids), kind: message}


def entity(text: str, fragment: str, kind: str = "mention", **extra) -> dict:
    """The entity of the first `fragment` in `text`, with UTF-16 offset and length."""
    start = text.index(fragment)
    return {
        "offset": len(text[:start].encode("utf-16-le")) // 2,
        "length": len(fragment.encode("utf-16-le")) // 2,
        "type": kind,
        **extra,
    }


def telegram_callback(update: dict, secret_token: str | None) -> tuple[dict, bytes]:
    """(headers, body) of the POST Telegram makes to a webhook set with this secret_token."""
    headers = {"Content-Type": "application/json"}
    if secret_token is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret_token
    return headers, json.dumps(update, ensure_ascii=False).encode("utf-8")


if __name__ == "__main__":
    serve_forever(FakeTelegram, "A fake Telegram Bot API: sendMessage and the webhook methods.")
