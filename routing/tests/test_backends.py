"""Model backends over real HTTP against the fake OpenAI-compatible server on loopback.

The pauses between retries go through an injected `sleep` that records and returns at
once, so the schedule is checked exactly and the suite stays fast.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from routing.backends import (
    Completion,
    ModelError,
    ModelRequestRejected,
    ModelUnavailable,
    complete,
)
from routing.backends import openai as openai_backend
from routing.models import ModelBackend
from tests.fakes.model import FakeModel, default_answer, openai_error
from tests.fakes.server import Fault, Response

CHAT = r"/chat/completions"
KEY = "sk-live-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def model_server():
    # One server for the module: stopping one waits out serve_forever's 0.5 s poll.
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def fake_model(model_server):
    """The shared fake, clean, with its default key, answer and delay after the test."""
    model_server.reset()
    yield model_server
    model_server.reset()
    model_server.api_key, model_server.answer, model_server.delay = None, default_answer, 0.0


@pytest.fixture(scope="module")
def http():
    with httpx.Client() as client:
        yield client


@pytest.fixture
def sleeps() -> list[float]:
    """Pass `sleeps.append` as `sleep`: records each pause instead of taking it."""
    return []


@pytest.fixture
def make_backend(db, fake_model):
    def make(**fields) -> ModelBackend:
        fields.setdefault("name", "deepseek")
        fields.setdefault("kind", "openai")
        fields.setdefault("base_url", f"{fake_model.url}/v1")
        fields.setdefault("model", "deepseek-chat")
        fields.setdefault("timeout", 2.0)
        backend = ModelBackend.objects.create(**fields)
        backend.refresh_from_db()  # as the task gets it: api_key decrypted from the row
        return backend

    return make


def assert_backoff(sleeps: list[float], count: int) -> None:
    """The default schedule 0.5, 1, 2 s, each stretched by at most the jitter."""
    assert len(sleeps) == count
    for slept, base in zip(sleeps, openai_backend.RETRY_DELAYS, strict=False):
        assert base <= slept <= base * (1 + openai_backend.JITTER)


# -- the happy path --------------------------------------------------------------------


def test_it_answers_and_sends_the_openai_request(make_backend, fake_model, http, sleeps):
    backend = make_backend()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "what is 2+2?"},
    ]

    result = complete(backend, messages, http, sleep=sleeps.append)

    assert isinstance(result, Completion)
    assert result.text == "[deepseek-chat] what is 2+2? (history=2)"
    assert result.backend_name == "deepseek"
    assert result.attempts == 1
    assert result.latency_ms > 0
    assert result.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    [request] = fake_model.received()
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.json() == {"model": "deepseek-chat", "messages": messages, "stream": False}
    assert "authorization" not in request.headers
    assert sleeps == []


def test_max_tokens_and_bearer_key_are_sent_only_when_set(make_backend, fake_model, http):
    fake_model.api_key = KEY
    backend = make_backend(api_key=KEY, max_tokens=64)

    result = complete(backend, HELLO, http)

    assert result.text == "[deepseek-chat] hello (history=0)"
    [request] = fake_model.received()
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json()["max_tokens"] == 64


def test_the_result_cannot_be_changed(make_backend, http):
    result = complete(make_backend(), HELLO, http)

    with pytest.raises(AttributeError):
        result.text = "something else"


@pytest.mark.parametrize(
    ("suffix", "expected_path"),
    [
        ("/v1", "/v1/chat/completions"),
        ("/v1/", "/v1/chat/completions"),
        ("", "/chat/completions"),
        ("/v1/chat/completions", "/v1/chat/completions"),
    ],
)
def test_base_url_is_joined_without_double_slashes(make_backend, fake_model, http, suffix, expected_path):
    complete(make_backend(base_url=fake_model.url + suffix), HELLO, http)

    assert [r.path for r in fake_model.received()] == [expected_path]


# -- transient failures are retried ----------------------------------------------------


def test_two_503s_then_an_answer(make_backend, fake_model, http, sleeps):
    fake_model.plan(CHAT, Fault(503, {"error": "overloaded"}), Fault(503, {"error": "overloaded"}))

    result = complete(make_backend(), HELLO, http, sleep=sleeps.append)

    assert result.text == "[deepseek-chat] hello (history=0)"
    assert result.attempts == 3
    assert len(fake_model.received(CHAT)) == 3
    assert_backoff(sleeps, 2)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_each_transient_status_is_retried(make_backend, fake_model, http, sleeps, status):
    fake_model.plan(CHAT, Fault(status))

    result = complete(make_backend(), HELLO, http, sleep=sleeps.append)

    assert result.attempts == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("3", 3.0), ("0.25", 0.25), ("120", openai_backend.MAX_DELAY), ("-5", 0.0)],
)
def test_429_retry_after_is_honoured_up_to_the_cap(make_backend, fake_model, http, sleeps, retry_after, expected):
    rate_limited = openai_error(429, "Rate limit reached", type_="requests", code="rate_limit_exceeded")
    rate_limited.headers["Retry-After"] = retry_after
    fake_model.plan_responses(rate_limited)

    result = complete(make_backend(), HELLO, http, sleep=sleeps.append)

    assert result.attempts == 2
    assert sleeps == [expected]


def test_503_retry_after_as_an_http_date(make_backend, fake_model, http, sleeps):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
    fake_model.plan_responses(Response(503, "down for maintenance", {"Retry-After": when}))

    complete(make_backend(), HELLO, http, sleep=sleeps.append)

    [slept] = sleeps
    assert 2.5 < slept <= 4.0  # the date has whole seconds, and a moment has passed


def test_retry_after_is_ignored_where_it_means_nothing(make_backend, fake_model, http, sleeps):
    fake_model.plan_responses(Response(500, "oops", {"Retry-After": "7"}))

    complete(make_backend(), HELLO, http, sleep=sleeps.append)

    assert_backoff(sleeps, 1)


def test_always_500_gives_up_after_four_attempts(make_backend, fake_model, http, sleeps):
    fake_model.plan(CHAT, *[Fault(500, {"error": {"message": "internal error"}})] * 5)

    with pytest.raises(ModelUnavailable) as caught:
        complete(make_backend(), HELLO, http, sleep=sleeps.append)

    error = caught.value
    assert error.transient is True
    assert error.attempts == 4
    assert len(fake_model.received(CHAT)) == 4
    assert_backoff(sleeps, 3)
    assert "deepseek: HTTP 500 from" in str(error)
    assert "/v1/chat/completions" in str(error)
    assert "internal error" in str(error)
    assert "4 attempts" in str(error)


def test_a_hanging_model_times_out_and_is_retried(make_backend, fake_model, http, sleeps):
    fake_model.plan(CHAT, *[Fault(delay=1.0, passthrough=True)] * 4)
    backend = make_backend(timeout=0.2)

    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        complete(backend, HELLO, http, sleep=sleeps.append)

    assert caught.value.attempts == 4
    assert "within 0.2 s" in str(caught.value)
    assert len(fake_model.received(CHAT)) == 4
    assert time.monotonic() - started < 4 * 1.0  # each attempt stopped at the timeout, not the answer


def test_a_timeout_then_an_answer(make_backend, fake_model, http, sleeps):
    fake_model.plan(CHAT, Fault(delay=1.0, passthrough=True))

    result = complete(make_backend(timeout=0.2), HELLO, http, sleep=sleeps.append)

    assert result.attempts == 2
    assert result.text == "[deepseek-chat] hello (history=0)"


def test_connection_refused(make_backend, http, sleeps):
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = make_backend(base_url=f"http://127.0.0.1:{port}/v1")

    with pytest.raises(ModelUnavailable) as caught:
        complete(backend, HELLO, http, sleep=sleeps.append)

    assert caught.value.attempts == 4
    assert f"could not connect to http://127.0.0.1:{port}/v1/chat/completions" in str(caught.value)
    assert_backoff(sleeps, 3)


# -- permanent failures are not ------------------------------------------------------


def test_wrong_api_key_is_rejected_at_once_without_showing_the_key(make_backend, fake_model, http, sleeps, caplog):
    caplog.set_level(logging.DEBUG)
    fake_model.api_key = "sk-the-right-one"
    backend = make_backend(api_key=KEY)

    with pytest.raises(ModelRequestRejected) as caught:
        complete(backend, HELLO, http, sleep=sleeps.append)

    error = caught.value
    assert error.transient is False
    assert error.attempts == 1
    assert len(fake_model.received()) == 1
    assert sleeps == []
    assert str(error).startswith(f"deepseek: HTTP 401 from {fake_model.url}/v1/chat/completions")
    assert "check the backend's API key" in str(error)
    assert "Incorrect API key provided" in str(error)
    assert KEY not in str(error) and KEY not in caplog.text


def test_a_key_echoed_by_the_server_is_redacted(make_backend, fake_model, http, caplog):
    caplog.set_level(logging.DEBUG)
    echoed = {"error": {"message": f"Incorrect API key provided: {KEY}. Find your key at ..."}}
    fake_model.plan(CHAT, Fault(503, echoed), Fault(401, echoed))
    backend = make_backend(api_key=KEY)

    with pytest.raises(ModelRequestRejected) as caught:
        complete(backend, HELLO, http, sleep=lambda seconds: None)

    assert caught.value.attempts == 2
    assert "Incorrect API key provided: ***" in str(caught.value)
    assert "Incorrect API key provided: ***" in caplog.text  # the retry's warning
    assert KEY not in str(caught.value) and KEY not in caplog.text
    assert KEY not in repr(caught.value)


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (400, "the model server refused the request"),
        (403, "not allowed"),
        (404, "check the backend's base URL"),
        (422, "the model server refused the request"),
    ],
)
def test_client_errors_are_rejected_without_retry(make_backend, fake_model, http, sleeps, status, advice):
    fake_model.plan(CHAT, Fault(status, {"error": {"message": "context_length_exceeded", "type": "x"}}))

    with pytest.raises(ModelRequestRejected) as caught:
        complete(make_backend(), HELLO, http, sleep=sleeps.append)

    assert caught.value.attempts == 1
    assert len(fake_model.received(CHAT)) == 1
    assert sleeps == []
    assert f"HTTP {status}" in str(caught.value)
    assert advice in str(caught.value)
    assert "context_length_exceeded" in str(caught.value)


def test_a_request_the_server_finds_invalid_is_rejected(make_backend, fake_model, http, sleeps):
    backend = make_backend()

    with pytest.raises(ModelRequestRejected) as caught:
        complete(backend, [{"role": "wizard", "content": "hi"}], http, sleep=sleeps.append)

    assert "HTTP 400" in str(caught.value)
    assert "messages[0].role" in str(caught.value)
    assert len(fake_model.received()) == 1


@pytest.mark.parametrize(
    "body",
    [
        "<html>502 bad gateway, but with a 200</html>",
        {"id": "chatcmpl-1", "object": "chat.completion"},
        {"choices": []},
        {"choices": [{"index": 0, "message": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_answer_is_rejected_without_retry(make_backend, fake_model, http, sleeps, body):
    fake_model.plan(CHAT, Fault(200, body))

    with pytest.raises(ModelRequestRejected) as caught:
        complete(make_backend(), HELLO, http, sleep=sleeps.append)

    assert "malformed response" in str(caught.value)
    assert caught.value.attempts == 1
    assert len(fake_model.received(CHAT)) == 1


def test_an_answer_cut_off_before_any_text_says_to_raise_max_tokens(make_backend, fake_model, http):
    cut = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}]}
    fake_model.plan(CHAT, Fault(200, cut))

    with pytest.raises(ModelRequestRejected, match="raise the backend's max tokens"):
        complete(make_backend(max_tokens=5), HELLO, http)


def test_a_disabled_backend_is_rejected_without_a_request(make_backend, fake_model, http):
    with pytest.raises(ModelRequestRejected, match="disabled") as caught:
        complete(make_backend(enabled=False), HELLO, http)

    assert caught.value.attempts == 0
    assert fake_model.received() == []


def test_a_backend_without_a_model_name_is_rejected_without_a_request(make_backend, fake_model, http):
    with pytest.raises(ModelRequestRejected, match="needs a base URL and a model name"):
        complete(make_backend(model=""), HELLO, http)

    assert fake_model.received() == []


def test_a_url_that_is_not_http_is_rejected_at_once(make_backend, http, sleeps):
    with pytest.raises(ModelRequestRejected, match="check the backend's base URL"):
        complete(make_backend(base_url="ftp://models.example/v1"), HELLO, http, sleep=sleeps.append)

    assert sleeps == []


def test_an_unknown_kind_is_rejected(make_backend, fake_model, http):
    with pytest.raises(ModelRequestRejected, match="unknown backend kind 'anthropic'"):
        complete(make_backend(kind="anthropic"), HELLO, http)

    assert fake_model.received() == []


def test_errors_say_whether_they_are_transient():
    combined = ModelError("deepseek failed; fallback qwen failed", transient=True, attempts=5)

    assert (combined.transient, combined.attempts, str(combined)) == (True, 5, "deepseek failed; fallback qwen failed")
    assert ModelError("x").transient is False
    assert ModelUnavailable("x", attempts=4).transient is True
    assert ModelRequestRejected("x").transient is False
    assert issubclass(ModelUnavailable, ModelError) and issubclass(ModelRequestRejected, ModelError)


# -- echo ------------------------------------------------------------------------------


def test_echo_answers_the_last_user_message_without_http(make_backend, fake_model, http):
    backend = make_backend(name="dry-run", kind="echo", model="")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "echo: first"},
        {"role": "user", "content": "second"},
    ]

    result = complete(backend, messages, http)

    assert result == Completion(
        text="echo: second", backend_name="dry-run", attempts=1, latency_ms=result.latency_ms, usage={}
    )
    assert fake_model.received() == []


def test_a_disabled_echo_backend_is_rejected(make_backend, http):
    with pytest.raises(ModelRequestRejected, match="disabled"):
        complete(make_backend(kind="echo", enabled=False), HELLO, http)


# -- the fake speaks the wire format the real servers do -------------------------------


def test_fake_lists_its_models(fake_model, http):
    fake_model.api_key = KEY

    listed = http.get(f"{fake_model.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    refused = http.get(f"{fake_model.url}/models")

    assert listed.json()["object"] == "list"
    assert [m["id"] for m in listed.json()["data"]] == ["fake-model"]
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "invalid_request_error"


def test_fake_answers_in_the_chat_completion_shape(fake_model, http):
    answer = http.post(f"{fake_model.url}/v1/chat/completions", json={"model": "m", "messages": HELLO}).json()

    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    assert isinstance(answer["created"], int)
    assert answer["model"] == "m"
    assert answer["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "[m] hello (history=0)"}, "finish_reason": "stop"}
    ]
    assert set(answer["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ],
)
def test_fake_refuses_an_incomplete_request_like_openai(fake_model, http, body, param):
    refused = http.post(f"{fake_model.url}/v1/chat/completions", json=body)

    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == param


def test_fake_answer_and_delay_can_be_set(make_backend, fake_model, http):
    fake_model.answer = lambda request: f"{len(request['messages'])} messages"
    fake_model.delay = 0.3

    result = complete(make_backend(), HELLO * 3, http)

    assert result.text == "3 messages"
    assert result.latency_ms >= 300


def test_fake_takes_its_settings_in_the_constructor(http):
    with FakeModel(api_key=KEY, answer=lambda request: "configured", models=["qwen-plus"]) as fake:
        auth = {"Authorization": f"Bearer {KEY}"}
        listed = http.get(f"{fake.url}/v1/models", headers=auth).json()
        answer = http.post(f"{fake.url}/v1/chat/completions", headers=auth, json={"model": "m", "messages": HELLO})
        refused = http.post(f"{fake.url}/v1/chat/completions", json={"model": "m", "messages": HELLO})

    assert [m["id"] for m in listed["data"]] == ["qwen-plus"]
    assert answer.json()["choices"][0]["message"]["content"] == "configured"
    assert refused.status_code == 401
