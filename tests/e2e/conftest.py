"""End-to-end fixtures: a real Celery worker process on the test database, and the fake
outside world (platform APIs and a model server) on loopback."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from django.db import connection

from tests.processes import process_env, start_group, stop_group, wait_until


def database_url_for_subprocess() -> str:
    """The URL of the database pytest-django created for this run (test_<name>)."""
    settings = connection.settings_dict
    if settings["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings['NAME']}"
    host, port, user = settings["HOST"] or "127.0.0.1", settings["PORT"] or 5432, settings["USER"]
    return f"postgres://{user}@{host}:{port}/{settings['NAME']}"


class CeleryWorker:
    """`celery -A config worker` in its own process group, on this run's queue."""

    def __init__(self, concurrency: int | None = 2, extra_env: dict[str, str] | None = None) -> None:
        """concurrency None: no -c, the pool size the settings give (as deployed)."""
        self.concurrency = concurrency
        self.extra_env = extra_env or {}
        self.log = Path(tempfile.mkstemp(prefix="celery-worker-", suffix=".log")[1])
        self.process = None

    def start(self) -> CeleryWorker:
        env = process_env(
            DJANGO_SETTINGS_MODULE="tests.settings",
            DATABASE_URL=database_url_for_subprocess(),
            **self.extra_env,
        )
        queue = os.environ["CELERY_TASK_DEFAULT_QUEUE"]
        self.process = start_group(
            [
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queue,
                *(["-c", str(self.concurrency)] if self.concurrency is not None else []),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "INFO",
            ],
            env,
            self.log,
        )
        wait_until(
            lambda: "ready." in self.log.read_text(errors="replace"),
            timeout=60,
            what="celery worker ready",
            interval=0.2,
            alive=self.process,
        )
        return self

    def kill_hard(self) -> None:
        """kill -9 the whole worker (main process and pool children): no clean-up, no ack."""
        import signal

        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, timeout=20, leader_only=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> CeleryWorker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def worker_env() -> dict[str, str]:
    """Per-test additions to the worker's environment (override in a test module)."""
    return {}


@pytest.fixture
def celery_worker(transactional_db, worker_env):
    worker = CeleryWorker(extra_env=worker_env).start()
    yield worker
    worker.stop()
