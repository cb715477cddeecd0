"""`manage.py doctor`: all green against real services (PostgreSQL or SQLite, Redis, a
Celery worker, Celery beat and gunicorn, each a real process), and one clear line with
its fix for each thing that is wrong; the exit code says whether anything failed."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import re
import socket
import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django_redis import get_redis_connection

from bots.models import Bot
from config.heartbeat import _key, stamp_beat
from tests.e2e.conftest import CeleryWorker, database_url_for_subprocess
from tests.ops.conftest import write_certificate
from tests.processes import free_port, process_env, start_group, stop_group, wait_until

# Checks that need running services; the tests of other checks leave them out.
SERVICES = "worker,beat,port"


def doctor(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("doctor", *args, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


def line(output: str, check: str) -> str:
    """The result line of one check, with its fix line if it has one."""
    match = re.search(rf"^(OK|FAIL|SKIP) +{check} .*(?:\n +fix: .*)?", output, re.MULTILINE)
    assert match, f"no line for {check}:\n{output}"
    return match.group(0)


# -- against running services -----------------------------------------------------------


class Gunicorn:
    def __init__(self, log_dir) -> None:
        self.port = free_port()
        self.log = log_dir / "gunicorn.log"
        self.process = None

    def __enter__(self) -> Gunicorn:
        env = process_env(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url_for_subprocess())
        self.process = start_group(
            [
                "gunicorn",
                "config.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--no-control-socket",
            ],
            env,
            self.log,
        )
        import httpx

        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200,
            60,
            "gunicorn answers /healthz",
            alive=self.process,
        )
        return self

    def __exit__(self, *exc) -> None:
        stop_group(self.process, timeout=20)


class Beat:
    def __init__(self, log_dir) -> None:
        self.log = log_dir / "beat.log"
        self.schedule = log_dir / "celerybeat-schedule"
        self.process = None

    def __enter__(self) -> Beat:
        env = process_env(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url_for_subprocess())
        self.process = start_group(
            ["celery", "-A", "config", "beat", "-l", "INFO", "--schedule", str(self.schedule)], env, self.log
        )
        wait_until(
            lambda: get_redis_connection("default").exists(_key("beat")),
            60,
            "beat records its heartbeat",
            alive=self.process,
        )
        return self

    def __exit__(self, *exc) -> None:
        stop_group(self.process, timeout=20)


@pytest.fixture
def no_beat_heartbeat():
    get_redis_connection("default").delete(_key("beat"))
    yield
    get_redis_connection("default").delete(_key("beat"))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_all_green_with_the_services_up_and_red_when_the_worker_stops(client, settings, tmp_path, no_beat_heartbeat):
    with Gunicorn(tmp_path) as web, Beat(tmp_path):
        settings.SWITCHBOARD_BIND = f"127.0.0.1:{web.port}"
        worker = CeleryWorker().start()
        try:
            code, output = doctor()
            assert code == 0, output
            assert "FAIL" not in output
            assert output.rstrip().endswith("All checks passed.")
            for check in (
                "settings",
                "secrets",
                "database",
                "migrations",
                "redis",
                "broker",
                "worker",
                "beat",
                "port",
                "clock",
                "disk",
            ):
                assert line(output, check).startswith("OK"), output
            assert f"consume queue '{settings.CELERY_TASK_DEFAULT_QUEUE}'" in line(output, "worker")
            assert f"gunicorn answers /healthz on 127.0.0.1:{web.port}" in line(output, "port")
            report = json.loads(doctor("--json")[1])
            assert report["ok"] is True and len(report["checks"]) == 16
        finally:
            worker.stop()

        code, output = doctor("--worker-timeout", "1")
        assert code == 1
        # Workers of other test runs on the same broker may answer too: they do not count.
        result = line(output, "worker")
        assert result.startswith(
            "FAIL  worker      no worker of this installation answered a ping within 1 s: messages are recorded but "
            "nobody answers them"
        ), result
        assert result.endswith(
            "\n                  fix: start a worker: .venv/bin/celery -A config worker "
            "(bash scripts/start.sh starts one)"
        ), result
        assert output.rstrip().endswith("1 of 16 checks failed.")
        # /readyz answers for the web process (a load balancer must not drop every web
        # server because the workers are down); the worker is doctor's and the alert's.
        assert client.get("/readyz").status_code == 200


class NamedWorker:
    """A Celery worker with a name and queue of its own, as another installation on the
    same broker would run one."""

    def __init__(self, log_dir, name: str, queue: str) -> None:
        self.log = log_dir / f"worker-{queue}.log"
        self.args = [
            "celery",
            "-A",
            "config",
            "worker",
            "--hostname",
            name,
            "-Q",
            queue,
            "-c",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
        ]
        self.process = None

    def __enter__(self) -> NamedWorker:
        env = process_env(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url_for_subprocess())
        self.process = start_group(self.args, env, self.log)
        wait_until(
            lambda: "ready." in self.log.read_text(errors="replace"),
            60,
            "celery worker ready",
            interval=0.2,
            alive=self.process,
        )
        return self

    def __exit__(self, *exc) -> None:
        stop_group(self.process, timeout=20, leader_only=True)


@pytest.mark.slow
@pytest.mark.django_db
def test_the_worker_is_found_next_to_another_installations_of_the_same_name(settings, tmp_path):
    """Two installations on one broker whose workers both answer as switchboard@<host> (the
    name the units gave every worker): doctor finds this installation's, every time, and
    says that the names clash; with only the other's running, ours is reported down."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    shared_name = f"switchboard@{socket.gethostname()}"
    with NamedWorker(tmp_path, shared_name, f"{queue}-other"):
        with NamedWorker(tmp_path, shared_name, queue):
            # Keyed by name, the answer that came last won: ours about every other time.
            results = [line(doctor("--skip", "beat,port", "--worker-timeout", "1.5")[1], "worker") for _ in range(6)]
        found = f"OK    worker      1 worker(s) consume queue '{queue}': {shared_name}"
        assert all(result.startswith(found) for result in results), results
        assert all(f"name(s) answer more than once ({shared_name})" in result for result in results), results

        # Only the other installation's worker runs now: ours is down, whoever else answers.
        results = [line(doctor("--skip", "beat,port", "--worker-timeout", "1.5")[1], "worker") for _ in range(3)]
    down = "FAIL  worker      no worker of this installation answered a ping within 1.5 s"
    assert all(result.startswith(down) for result in results), results
    assert any(
        "other worker(s) on this broker did (queues " in result and f"{queue}-other" in result for result in results
    ), results


# -- one failure at a time ----------------------------------------------------------------


@pytest.mark.django_db
def test_the_fix_names_what_runs_the_services(settings):
    settings.SWITCHBOARD_BIND = f"127.0.0.1:{free_port()}"
    settings.SWITCHBOARD_SERVICE_MANAGER = "systemd"
    code, output = doctor("--skip", "worker,beat")
    assert code == 1
    assert line(output, "port").endswith(
        "fix: sudo systemctl restart switchboard-web; see why it stopped: journalctl -u switchboard-web -n 50"
    )
    assert f"nothing listens on {settings.SWITCHBOARD_BIND}: gunicorn is not running" in line(output, "port")
    settings.SWITCHBOARD_SERVICE_MANAGER = "supervisor"
    settings.LOG_DIR = "/var/log/switchboard"
    assert line(doctor("--skip", "worker,beat,logs")[1], "port").endswith(
        "fix: sudo switchboard-supervisor restart; see why it stopped in /var/log/switchboard/web.log"
    )


class NotSwitchboard(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's naming
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.django_db
def test_a_port_taken_by_another_program(settings):
    server = http.server.HTTPServer(("127.0.0.1", 0), NotSwitchboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        settings.SWITCHBOARD_BIND = f"0.0.0.0:{port}"
        code, output = doctor("--skip", "worker,beat")
    finally:
        server.shutdown()
    assert code == 1
    result = line(output, "port")
    assert result.startswith(f"FAIL  port        port {port} is taken by another program")
    assert "it answered /healthz with 404" in result
    assert "fix: stop that program, or move Switchboard to a free port: deploy.sh --port=N" in result


@pytest.mark.django_db
def test_the_database_must_have_room_for_another_worker_pool(settings):
    from django.db import connection

    if connection.vendor != "postgresql":
        assert line(doctor("--skip", SERVICES)[1], "capacity").startswith("SKIP  capacity    sqlite: no connection")
        pytest.skip("the connection limit is PostgreSQL's")
    settings.CELERY_WORKER_CONCURRENCY = 8
    settings.SWITCHBOARD_WEB_WORKERS, settings.SWITCHBOARD_WEB_THREADS = 2, 4
    result = line(doctor("--skip", SERVICES)[1], "capacity")
    assert re.fullmatch(
        r"OK    capacity    \d+ of PostgreSQL's \d+ connections in use, room for another machine "
        r"like this one: 8 worker processes and 2 × 4 web threads",
        result,
    ), result
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('max_connections')::int")
        (limit,) = cursor.fetchone()
    # The worker pool alone fits; with every web thread's connection it does not.
    settings.CELERY_WORKER_CONCURRENCY = 1
    settings.SWITCHBOARD_WEB_WORKERS, settings.SWITCHBOARD_WEB_THREADS = 1, limit
    code, output = doctor("--skip", SERVICES)
    assert code == 1
    result = line(output, "capacity")
    assert (
        result.startswith("FAIL  capacity    ")
        and (
            f"(1 worker processes, CELERY_WORKER_CONCURRENCY, and 1 × {limit} web threads, "
            "SWITCHBOARD_WEB_WORKERS × SWITCHBOARD_WEB_THREADS)" in result
        )
        and ("fix: raise max_connections in postgresql.conf" in result)
    ), result


@pytest.mark.django_db
def test_gunicorn_on_a_public_address_itself_is_a_failure(settings, tmp_path):
    """Slow clients starve a gunicorn that other machines reach directly: doctor says so
    and names the fix (nginx in front)."""
    port = free_port()
    env = process_env(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url_for_subprocess())
    process = start_group(
        ["gunicorn", "config.wsgi:application", "--bind", f"0.0.0.0:{port}", "--workers", "1", "--no-control-socket"],
        env,
        tmp_path / "gunicorn.log",
    )
    try:
        import httpx

        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200,
            60,
            "gunicorn answers /healthz",
            alive=process,
        )
        settings.SWITCHBOARD_BIND = f"0.0.0.0:{port}"
        code, output = doctor("--skip", "worker,beat")
    finally:
        stop_group(process, timeout=20)
    assert code == 1
    result = line(output, "port")
    assert result.startswith(
        f"FAIL  port        gunicorn itself answers 0.0.0.0:{port}, which other machines can "
        "reach: two clients sending their headers slowly hold its workers"
    ), result
    assert "fix: put nginx in front, as deploy.sh and scripts/start.sh do" in result


@pytest.mark.django_db
def test_a_secret_file_others_can_read(monkeypatch, tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text("k" * 60)
    key_file.chmod(0o644)
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("SECRET_KEY_FILE", str(key_file))
    code, output = doctor("--skip", SERVICES)
    assert code == 1
    assert line(output, "secrets") == (
        f"FAIL  secrets     {key_file} is readable by other users (mode 644)\n"
        f"                  fix: chmod 600 {key_file}"
    )
    key_file.chmod(0o600)
    assert line(doctor("--skip", SERVICES)[1], "secrets").startswith(f"OK    secrets     SECRET_KEY in {key_file}")


@pytest.mark.django_db
def test_stored_credentials_the_key_ring_cannot_read(settings, make_bot):
    make_bot(app_secret="corp secret", token="callback token")
    assert line(doctor("--skip", SERVICES)[1], "secrets").endswith("2 stored credentials readable with the key ring")
    settings.SWITCHBOARD_SECRET_KEYS = base64.b64encode(os.urandom(32)).decode()  # the old ring is lost
    code, output = doctor("--skip", SERVICES)
    assert code == 1
    assert "2 of 2 stored credentials were encrypted with a key that is not in SWITCHBOARD_SECRET_KEYS" in (
        line(output, "secrets")
    )
    assert "fix: restore the key ring from your backup" in line(output, "secrets")
    assert Bot.objects.count() == 1  # read-only


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("days", "issuer", "status", "text"),
    [
        (90, "Let's Encrypt R11", "OK", "valid for 90 more days"),
        (90, None, "OK", "valid for 90 more days; self-signed: platforms that verify certificates"),
        (3, "Let's Encrypt R11", "FAIL", "expires in 3.0 days"),
        (-2, "Let's Encrypt R11", "FAIL", "expired 2 days ago"),
    ],
    ids=["valid", "self-signed", "expiring", "expired"],
)
def test_the_certificate(settings, tmp_path, days, issuer, status, text):
    path = tmp_path / "fullchain.pem"
    write_certificate(path, days=days + 0.01, issuer=issuer)
    settings.TLS_CERTIFICATE_PATH = str(path)
    code, output = doctor("--skip", SERVICES)
    result = line(output, "tls")
    assert result.startswith(status) and text in result, result
    assert code == (1 if status == "FAIL" else 0), output
    if status == "FAIL":
        assert f"fix: put a renewed certificate and key where nginx reads them ({path})" in result


@pytest.mark.django_db
def test_beat_that_stopped_or_never_ran(settings, no_beat_heartbeat):
    code, output = doctor("--skip", "worker,port")
    assert code == 1
    assert "Celery beat never ran against this Redis" in line(output, "beat")
    get_redis_connection("default").set(_key("beat"), time.time() - 1000)
    assert "Celery beat last queued the outbox sweep 1000 s ago (it should every 30 s)" in line(
        doctor("--skip", "worker,port")[1], "beat"
    )
    stamp_beat()
    assert line(doctor("--skip", "worker,port")[1], "beat").startswith(
        "OK    beat        queued the outbox sweep 0 s ago"
    )


@pytest.mark.django_db
def test_nginx_not_answering(settings):
    port = free_port()
    settings.SWITCHBOARD_PUBLIC_URL = f"https://localhost:{port}"
    code, output = doctor("--skip", SERVICES + ",tls")
    assert code == 1
    assert f"FAIL  nginx       nothing listens on port {port}: nginx is not running" in line(output, "nginx")
    assert line(output, "nginx").rstrip().endswith("the site is /etc/nginx/sites-available/switchboard.conf")


@pytest.mark.django_db
def test_unconfigured_checks_are_skipped_and_skip_is_checked(settings):
    code, output = doctor("--skip", SERVICES)
    assert code == 0, output
    assert line(output, "nginx").startswith("SKIP")
    assert line(output, "tls").startswith("SKIP")
    assert line(output, "worker") == "SKIP  worker      skipped (--skip)"
    with pytest.raises(CommandError, match="--skip: no check named wrokers"):
        call_command("doctor", "--skip", "wrokers")


@pytest.mark.django_db
def test_missing_static_files_under_the_manifest_storage(settings, tmp_path):
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    code, output = doctor("--skip", SERVICES)
    assert code == 1
    assert line(output, "static") == (
        f"FAIL  static      {tmp_path}/static/staticfiles.json is missing: the console would answer 500\n"
        "                  fix: run: manage.py collectstatic --noinput"
    )
