"""Starting and stopping real processes in tests: free ports, process groups, a private
redis-server, and polling until something is true.

Everything a test starts runs in its own session (process group), so one killpg() ends
the process and all its children, and the group can be inspected for survivors.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
REDIS_SERVER = Path("/usr/bin/redis-server")

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(drop: Iterable[str] = (), **values: str) -> dict[str, str]:
    """This process's environment with .venv/bin first on PATH, without the variables in
    `drop` (and without DJANGO_SETTINGS_MODULE, which pytest-django points at the test
    settings), plus `values`."""
    env = {key: value for key, value in os.environ.items() if key not in {*drop, "DJANGO_SETTINGS_MODULE"}}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(values)
    return env


def start_group(args: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """Start args in a new session, its output (stdout and stderr) going to log_path."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass(frozen=True)
class Member:
    pid: int
    ppid: int
    cmdline: str


def group_members(pgid: int) -> list[Member]:
    """Live (non-zombie) processes in process group pgid, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # the process ended while we looked
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            members.append(Member(int(entry.name), int(ppid), command))
    return members


def stop_group(proc: subprocess.Popen, timeout: float = 40, leader_only: bool = False) -> bool:
    """SIGTERM the process group of proc and wait for all of it to end; SIGKILL whatever is
    left after timeout. Returns True when TERM was enough.

    leader_only: TERM only proc and let it stop its children, as systemd's KillMode=mixed
    does. A Celery worker needs this: a pool child that gets a TERM of its own dies at
    once, in the middle of its task, instead of finishing it."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    try:
        if leader_only:
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_members(pgid):
            return True
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    return False


def wait_until(
    check: Callable[[], T], timeout: float, what: str, interval: float = 0.5, alive: subprocess.Popen | None = None
) -> T:
    """Call check until it returns something truthy (and return that). An exception from
    check counts as "not yet". Stops early when the process `alive` has exited."""
    deadline = time.monotonic() + timeout
    last = "no attempt finished"
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # not up yet: connection refused, 503, ...
            last = f"{type(exc).__name__}: {exc}"
        else:
            if result:
                return result
            last = f"returned {result!r}"
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"{what}: the process exited with code {alive.returncode} first ({last})")
        time.sleep(interval)
    raise AssertionError(f"{what}: not true after {timeout:.0f} s ({last})")


class RedisServer:
    """A private redis-server on a free port, without persistence, for tests that need to
    take Redis away. Use as a context manager, or call start() and stop()."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(
            lambda: self.client().ping(),
            timeout=10,
            what=f"redis-server on port {self.port}",
            interval=0.05,
            alive=self.process,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
