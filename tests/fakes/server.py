"""A small threaded HTTP server base: real sockets, real HTTP, scripted faults.

Subclasses define routes; every request is recorded; `plan()` queues faults (a status,
a JSON body, a delay) that the next matching requests get instead of the normal answer.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self):
        return json.loads(self.body or b"null")


@dataclass
class Fault:
    status: int = 500
    body: object = field(default_factory=dict)
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # With passthrough, the delay is added and then the normal handler answers.
    passthrough: bool = False
    # Close the connection instead of writing the answer (with passthrough: after the
    # request was handled), as when the answer is lost on the way back.
    hang_up: bool = False


@dataclass
class Response:
    status: int = 200
    body: object = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[["FakeServer", Recorded, re.Match], Response]


class FakeServer:
    """Start with `with FakeX() as fake:` or `.start()`; `fake.url` is its base URL."""

    name = "fake"
    routes: list[tuple[str, str, str]] = []  # (method, path regex, method name)

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[Recorded] = []
        self._faults: dict[str, deque[Fault]] = {}
        self._lock = threading.Lock()
        self._compiled = [(m, re.compile(p + r"\Z"), getattr(self, h)) for m, p, h in self.routes]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; with Nagle's algorithm and the
            # client's delayed ACK that adds ~40 ms to every answer on loopback.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                outer._dispatch(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format, *args) -> None:  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        # A short poll interval: stop() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- scripting and inspection ------------------------------------------------------

    def plan(self, path_regex: str, *faults: Fault) -> None:
        """The next len(faults) requests whose path matches get these faults, in order."""
        with self._lock:
            self._faults.setdefault(path_regex, deque()).extend(faults)

    def received(self, path_regex: str = ".*") -> list[Recorded]:
        pattern = re.compile(path_regex)
        with self._lock:
            return [r for r in self.requests if pattern.search(r.path)]

    def wait_for(self, path_regex: str, count: int, timeout: float = 30.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(path_regex)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: {len(self.received(path_regex))} of {count} requests to {path_regex}")

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()

    # -- plumbing ----------------------------------------------------------------------

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            for regex, queue in self._faults.items():
                if queue and re.search(regex, path):
                    return queue.popleft()
        return None

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        record = Recorded(
            method=handler.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=handler.rfile.read(length) if length else b"",
            at=time.time(),
        )
        with self._lock:
            self.requests.append(record)
        fault = self._next_fault(parts.path)
        if fault is not None:
            time.sleep(fault.delay)
        if fault is not None and not fault.passthrough:
            response = Response(fault.status, fault.body, fault.headers)
        else:
            response = self._route(record)
        if fault is not None and fault.hang_up:
            handler.close_connection = True  # the client reads the end of the stream, no answer
            return
        self._write(handler, response)

    def _route(self, record: Recorded) -> Response:
        for method, pattern, func in self._compiled:
            match = pattern.match(record.path)
            if match and method == record.method:
                try:
                    return func(record, match)
                except (ValueError, KeyError, TypeError) as exc:
                    return Response(400, {"error": f"{self.name} could not read the request: {exc}"})
        return Response(404, {"error": f"{self.name} has no route {record.method} {record.path}"})

    @staticmethod
    def _write(handler: BaseHTTPRequestHandler, response: Response) -> None:
        if isinstance(response.body, bytes | str):
            payload = response.body.encode() if isinstance(response.body, str) else response.body
            content_type = "text/plain; charset=utf-8"
        else:
            payload = json.dumps(response.body, ensure_ascii=False).encode()
            content_type = "application/json; charset=utf-8"
        try:
            handler.send_response(response.status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(payload)))
            for key, value in response.headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout fired during an injected delay)


def serve_forever(server_class: type[FakeServer], description: str) -> None:
    """Entry point for `python -m tests.fakes.<name>`: run one fake until Ctrl-C."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    server = server_class(args.host, args.port).start()
    print(f"{server.name} listening on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
