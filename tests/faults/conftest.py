"""Fault-test helpers: gunicorn on the test database with chosen environment overrides,
a TCP proxy that can take PostgreSQL away, and a signed WeCom bot."""

from __future__ import annotations

import base64
import os
import secrets
import socket
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from bots.models import Bot
from routing.models import ModelBackend
from tests.e2e.conftest import CeleryWorker, database_url_for_subprocess
from tests.fakes.model import FakeModel
from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET, FakeWeCom, wecom_callback, wecom_text_xml
from tests.processes import free_port, process_env, start_group, stop_group, wait_until


class Gunicorn:
    """gunicorn config.wsgi (sync workers, one unless told) on tests.settings, in its own
    process group."""

    def __init__(self, workers: int = 1, **env: str) -> None:
        self.workers = workers
        self.port = free_port()
        self.env = {"DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": database_url_for_subprocess(), **env}
        self.log = Path(tempfile.mkstemp(prefix="gunicorn-fault-", suffix=".log")[1])
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gunicorn:
        self.process = start_group(
            [
                "gunicorn",
                "config.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.workers),
                "--worker-class",
                "sync",
                "--no-control-socket",
            ],
            process_env(**self.env),
            self.log,
        )
        wait_until(
            lambda: httpx.get(f"{self.url}/healthz", timeout=2),
            timeout=60,
            what="gunicorn answering",
            interval=0.2,
            alive=self.process,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, timeout=20)

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; stop() closes the listener and cuts every
    open connection (the database "goes away"), start() serves again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
            listener, self._listener = self._listener, None
        for sock in [*sockets, *([listener] if listener else [])]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def wecom():
    with FakeWeCom() as fake:
        yield fake


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def bot(transactional_db, wecom, model) -> Bot:
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    return Bot.objects.create(
        name="faults",
        platform="wecom",
        app_id=DEFAULT_CORP_ID,
        app_secret=DEFAULT_CORP_SECRET,
        token=secrets.token_urlsafe(12),
        encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
        api_base_url=wecom.url,
        extra={"agent_id": 1000002},
        default_backend=backend,
    )


def signed_callback(bot: Bot, text: str, msg_id: int, user: str = "zhangsan") -> tuple[str, bytes]:
    """(path with query, body) of a signed, encrypted WeCom text callback."""
    query, body = wecom_callback(bot, wecom_text_xml(bot.app_id, user, text, msg_id, 1000002))
    return f"{bot.callback_path}?{query}", body


def post(base_url: str, path_and_query: str, body: bytes, timeout: float = 10) -> httpx.Response:
    return httpx.post(base_url + path_and_query, content=body, headers={"Content-Type": "text/xml"}, timeout=timeout)


@pytest.fixture
def celery_worker(transactional_db):
    worker = CeleryWorker().start()
    yield worker
    worker.stop()
