"""Clients that hold a web server's connections, for the tests that Switchboard's port
cannot be starved (docs/operations.md, "Slow clients"): connections that trickle their
headers one byte a second, and WeChat users waiting for a passive reply from a slow
model. Both shapes use them: scripts/start.sh and deploy.sh, each with nginx in front."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from uuid import uuid4

import httpx

from channels_app.adapters.wechat_mp.tests.support import AES_KEY, APP_ID, SECRET, TOKEN, creds, text_xml
from tests.fakes.wechat_mp import mp_encrypted_callback

# A WeChat Official Account bot in passive mode: its answers travel in the callback's
# own response, so each callback waits for the model (WECHAT_PASSIVE_HOLD_MS).
PASSIVE_BOT = SimpleNamespace(uuid=uuid4(), app_id=APP_ID, token=TOKEN, encoding_aes_key=AES_KEY)


def passive_bot_config(backend: str) -> dict:
    return {
        "name": "passive-wechat",
        "platform": "wechat_mp",
        "uuid": str(PASSIVE_BOT.uuid),
        "app_id": APP_ID,
        "app_secret": SECRET,
        "token": TOKEN,
        "encoding_aes_key": AES_KEY,
        "extra": {"customer_service_api": False},
        "default_backend": backend,
    }


class TrickledHeaders:
    """`count` connections that send a request's headers one byte a second and never finish."""

    def __init__(self, host: str, port: int, count: int, host_header: str) -> None:
        self.address = (host, port)
        self.count = count
        self.start_line = f"POST /callback/wecom/{uuid4()}/ HTTP/1.1\r\nHost: {host_header}\r\n".encode()
        self.sockets: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> TrickledHeaders:
        for _ in range(self.count):
            connection = socket.create_connection(self.address, timeout=5)
            connection.sendall(self.start_line[:10])
            self.sockets.append(connection)
        self.thread.start()
        return self

    def _trickle(self) -> None:
        rest = self.start_line[10:] + b"X-Slow: " + b"a" * 600
        for byte in rest:
            for connection in self.sockets:
                try:
                    connection.send(bytes([byte]))
                except OSError:
                    pass
            if self.stop.wait(1):
                return

    def open(self) -> int:
        """How many of them the server has not closed yet."""
        still = 0
        for connection in self.sockets:
            connection.setblocking(False)
            try:
                still += connection.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                still += 1
            except OSError:
                pass
        return still

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for connection in self.sockets:
            connection.close()


@dataclass
class PassiveWaits:
    """`count` WeChat users, each sending a message to the passive bot at once: each
    callback holds a web thread until the model answers or the hold runs out."""

    base_url: str
    host_header: str
    count: int
    finished: list[float] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def _one(self, index: int) -> None:
        xml = text_xml(
            f"slow question {index}",
            msg_id=24587690000000000 + index + int(time.time()) * 100,
            openid=f"oSlowClientUser{index:014d}",
        )
        query, body = mp_encrypted_callback(creds(), xml)
        started = time.monotonic()
        try:
            httpx.post(
                f"{self.base_url}/callback/wechat_mp/{PASSIVE_BOT.uuid}/?{query}",
                content=body,
                headers={"Host": self.host_header, "Content-Type": "text/xml"},
                timeout=30,
            )
        finally:
            self.finished.append(time.monotonic() - started)

    def __enter__(self) -> PassiveWaits:
        for index in range(self.count):
            thread = threading.Thread(target=self._one, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        for thread in self.threads:
            thread.join(timeout=30)


def assert_answered_while_held(
    send, host: str, port: int, host_header: str, base_url: str, slow: int = 12, passive: int = 2
) -> float:
    """`slow` trickling connections and `passive` waiting WeChat users hold the port while
    `send()` makes one normal signed callback: it is answered within 5 s (a sync gunicorn
    on the port waited for its 30 s worker timeout). Returns how long it took."""
    with (
        TrickledHeaders(host, port, slow, host_header) as trickled,
        PassiveWaits(base_url, host_header, passive) as waits,
    ):
        time.sleep(1.5)  # the passive callbacks are in their hold; the trickles have begun
        started = time.monotonic()
        send()
        took = time.monotonic() - started
        assert took < 5, f"a normal callback took {took:.1f} s while slow clients held the port"
        assert trickled.open() == slow, "the slow clients were let go before the callback was answered"
        assert len(waits.finished) < passive, "the passive WeChat callbacks were not waiting any more"
    assert all(seconds > 4 for seconds in waits.finished), waits.finished  # they did hold their threads
    return took
