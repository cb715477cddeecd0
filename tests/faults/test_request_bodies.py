"""Hostile and chunked request bodies against gunicorn as deployed (config.wsgi, sync
workers): a body nested 1,000 deep is a 4xx with a reason on every platform and on the
API, never a 500 (nor an ERROR traceback in the log), and a body sent with
`Transfer-Encoding: chunked` is read whole, up to CALLBACK_MAX_BODY_BYTES, and answered
413 past it."""

from __future__ import annotations

import importlib
import socket
from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings

from bots.models import ApiKey
from channels_app.models import InboundMessage
from channels_app.registry import registered
from channels_app.tests.contract import Request
from tests.faults.conftest import Gunicorn
from tests.fuzz.hostile import huge, nested

pytestmark = pytest.mark.slow

DEPTH = 1000  # 6 KB of {"a": …}: what raised RecursionError


def kit_for(platform: str):
    return importlib.import_module(f"channels_app.adapters.{platform}.tests.contract").KIT


def send(base_url: str, request: Request, content: bytes | Iterator[bytes] | None = None) -> httpx.Response:
    headers = {"Content-Type": request.content_type, **request.headers}
    return httpx.request(
        request.method,
        base_url + request.path,
        headers=headers,
        content=request.body if content is None else content,
        timeout=20,
    )


def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """The body as httpx sends a generator: Transfer-Encoding: chunked, no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def assert_refused_in_plain_text(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])
    assert response.headers["Content-Type"].startswith("text/plain"), response.headers["Content-Type"]
    assert response.text.strip()


def test_json_nested_1000_deep_is_refused_with_a_reason_on_every_platform_and_the_api(transactional_db):
    with Gunicorn() as web:
        for platform in sorted(registered()):
            kit = kit_for(platform)
            with kit.running() as fake:
                bot = kit.make_bot(fake.url)
                body = nested(kit.payload_format, DEPTH)
                delivered = kit.text_message(bot, "4711", "hello")
                # As it is, before any signature check, and signed, after them (where the
                # platform's payload is XML, the nesting is XML, which is well-formed).
                assert_refused_in_plain_text(
                    send(
                        web.url,
                        Request(delivered.method, delivered.path, body, delivered.content_type, delivered.headers),
                    )
                )
                signed = send(web.url, kit.deliver(bot, body))
                if kit.payload_format == "json":
                    assert_refused_in_plain_text(signed)
                else:
                    assert signed.status_code < 500, signed.status_code

        _, key = ApiKey.issue(name="hostile", scopes=["chat"])
        headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
        api = httpx.post(f"{web.url}/api/v1/chat", content=nested("json", DEPTH), headers=headers, timeout=20)
        assert api.status_code == 400
        assert api.json()["error"]["code"] == "parse_error"
        too_large = httpx.post(
            f"{web.url}/api/v1/chat",
            content=huge("json", 2 * settings.CALLBACK_MAX_BODY_BYTES),
            headers=headers,
            timeout=20,
        )
        assert (too_large.status_code, too_large.headers["Content-Type"]) == (413, "application/json")
        assert too_large.json()["error"]["code"] == "too_large"
    log = web.log.read_text()
    assert "RecursionError" not in log and '"level": "ERROR"' not in log, log[-2000:]
    assert not InboundMessage.objects.exists()


def test_a_chunked_body_is_read_whole_and_over_the_cap_is_413(transactional_db):
    kit = kit_for("webhook")
    with kit.running() as fake, Gunicorn() as web:
        bot = kit.make_bot(fake.url)
        signed = kit.text_message(bot, "5001", "sent in chunks")
        # Well past one read of the body, in many chunks.
        padded = kit.deliver(bot, signed.body[:-1] + b', "padding": "' + b"p" * 200_000 + b'"}')
        assert send(web.url, padded, chunks(padded.body)).status_code == 202  # the webhook's "accepted"
        assert InboundMessage.objects.get(platform_message_id="5001").text == "sent in chunks"

        over = kit.deliver(bot, huge("json", settings.CALLBACK_MAX_BODY_BYTES + 1))
        refused = send(web.url, over, chunks(over.body, 64 * 1024))
        assert (refused.status_code, refused.text) == (413, "too large\n")
        at_the_cap = kit.deliver(bot, huge("json", settings.CALLBACK_MAX_BODY_BYTES))
        # Read whole: refused for what it says (no message id), not for its size.
        assert send(web.url, at_the_cap, chunks(at_the_cap.body, 64 * 1024)).status_code == 400

        # The API reads a chunked body the same way, and refuses one over the cap in its JSON.
        _, key = ApiKey.issue(name="chunked", scopes=["chat"])
        api = httpx.post(
            f"{web.url}/api/v1/chat",
            content=chunks(huge("json", 2 * settings.CALLBACK_MAX_BODY_BYTES), 64 * 1024),
            headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"},
            timeout=20,
        )
        assert (api.status_code, api.json()["error"]["code"]) == (413, "too_large")
    # Read no further than one byte past the cap.
    assert f"refused: body of {settings.CALLBACK_MAX_BODY_BYTES + 1} bytes" in web.log.read_text()
    assert InboundMessage.objects.count() == 1


def status_of_cut_request(port: int, path: str, framing: str, sent: bytes) -> bytes:
    """The status line gunicorn answers to a body the client stops sending part way."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        sock.sendall(head.encode() + sent)
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(4096).split(b"\r\n", 1)[0]


def test_a_body_cut_short_is_a_4xx(transactional_db):
    kit = kit_for("webhook")
    with kit.running() as fake, Gunicorn() as web:
        path = kit.make_bot(fake.url).callback_path
        for framing, sent in [
            ("Transfer-Encoding: chunked", b'a\r\n{"id": "1"'),  # the last chunk never ends
            ("Transfer-Encoding: chunked", b'zz\r\n{"id": "1"}\r\n0\r\n\r\n'),  # not a chunk size
            ("Content-Length: 100", b'{"id": "1"'),
        ]:
            status = status_of_cut_request(web.port, path, framing, sent)
            assert status.startswith(b"HTTP/1.1 4"), (framing, sent, status)
        # A chunk that stops in the middle: the client is gone, gunicorn closes quietly.
        assert status_of_cut_request(web.port, path, "Transfer-Encoding: chunked", b'20\r\n{"id"') == b""
    log = web.log.read_text()
    assert '"level": "ERROR"' not in log and "Traceback" not in log, log[-2000:]
    assert InboundMessage.objects.count() == 0
