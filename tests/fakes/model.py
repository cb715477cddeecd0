"""A fake OpenAI-compatible model server: `POST /v1/chat/completions` and `GET /v1/models`
in the real wire format (also without the /v1 prefix, as some servers are configured).

The default answer shows what the model was given, so a test can see the routing and the
conversation context in the reply: `[<model>] <last user message> (history=<n>)`, n being
the user and assistant messages before that last user message.

    with FakeModel(api_key="sk-test") as model:
        model.plan(r"/chat/completions", Fault(503), Fault(503))   # two failures, then answers
        model.plan_responses(Response(429, {...}, {"Retry-After": "2"}))   # a fault with headers
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable

from tests.fakes.server import FakeServer, Recorded, Response, serve_forever

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> Response:
    return Response(status, {"error": {"message": message, "type": type_, "param": param, "code": code}})


def default_answer(request: dict) -> str:
    messages = request["messages"]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
    content = messages[last_user]["content"] if last_user < len(messages) else ""
    history = sum(1 for m in messages[:last_user] if m.get("role") in ("user", "assistant"))
    return f"[{request['model']}] {content} (history={history})"


def _tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: one token per word."""
    return len(text.split())


class FakeModel(FakeServer):
    name = "fake-model"
    routes = [
        ("POST", r"(?:/v1)?/chat/completions", "chat_completions"),
        ("GET", r"(?:/v1)?/models", "list_models"),
    ]

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        answer: Callable[[dict], str] | None = None,
        delay: float = 0.0,
        models: Iterable[str] = ("fake-model",),
    ) -> None:
        super().__init__(host, port)
        #: when set, every request must carry `Authorization: Bearer <api_key>`
        self.api_key = api_key
        #: request body → answer text; the default echoes what the model was given
        self.answer: Callable[[dict], str] = answer or default_answer
        #: seconds added before every answer (a slow model)
        self.delay = delay
        self.models = list(models)
        self._scripted: deque[Response] = deque()
        self._lock = threading.Lock()  # for the scripted responses and the in-flight count
        #: completions being answered right now, and the most there ever were at once
        self.in_flight = 0
        self.most_in_flight = 0

    def plan_responses(self, *responses: Response) -> None:
        """The next chat completions get these responses, in order. Unlike plan()'s Fault,
        a Response carries headers (a 429 with Retry-After)."""
        with self._lock:
            self._scripted.extend(responses)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._scripted.clear()
            self.most_in_flight = self.in_flight

    # -- routes ------------------------------------------------------------------------

    def chat_completions(self, record: Recorded, match: re.Match) -> Response:
        refused = self._check_key(record)
        if refused is not None:
            return refused
        with self._lock:
            scripted = self._scripted.popleft() if self._scripted else None
        if scripted is not None:
            return scripted
        try:
            request = json.loads(record.body)
        except ValueError as exc:
            return openai_error(400, f"We could not parse the JSON body of your request. ({exc})")
        refused = self._validate(request)
        if refused is not None:
            return refused
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            text = self.answer(request)
        finally:
            with self._lock:
                self.in_flight -= 1
        prompt_tokens = sum(_tokens(str(m.get("content") or "")) for m in request["messages"])
        completion_tokens = _tokens(text)
        return Response(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def list_models(self, record: Recorded, match: re.Match) -> Response:
        refused = self._check_key(record)
        if refused is not None:
            return refused
        return Response(
            200,
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "switchboard-fake"}
                    for model in self.models
                ],
            },
        )

    # -- checks, as the real API makes them -------------------------------------------

    def _check_key(self, record: Recorded) -> Response | None:
        if not self.api_key:
            return None
        header = record.headers.get("authorization", "")
        if not header:
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        presented = header.removeprefix("Bearer ").strip()
        if presented != self.api_key:
            masked = f"{presented[:3]}****{presented[-4:]}" if len(presented) > 8 else "****"
            return openai_error(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")
        return None

    @staticmethod
    def _validate(request: object) -> Response | None:
        if not isinstance(request, dict):
            return openai_error(400, "The request body must be a JSON object.")
        if not isinstance(request.get("model"), str) or not request["model"]:
            return openai_error(400, "you must provide a model parameter", param="model")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            return openai_error(
                400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return openai_error(
                    400,
                    f"Invalid value for 'messages[{index}].role'.",
                    param=f"messages[{index}].role",
                    code="invalid_value",
                )
            if not isinstance(message.get("content"), str):
                return openai_error(
                    400,
                    f"Invalid type for 'messages[{index}].content': expected a string.",
                    param=f"messages[{index}].content",
                    code="invalid_type",
                )
        if request.get("stream"):
            # Streaming is a different wire format (server-sent events) this fake does not speak.
            return openai_error(400, 'fake-model does not stream; send "stream": false', param="stream")
        max_tokens = request.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return openai_error(400, "Invalid 'max_tokens': expected an integer of at least 1.", param="max_tokens")
        return None


if __name__ == "__main__":
    serve_forever(FakeModel, "A fake OpenAI-compatible model server (chat completions, models).")
