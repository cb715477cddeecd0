"""The embedded default, for real: `bash scripts/start.sh --no-install` with no database
configured must bring up SQLite in the var dir, gunicorn behind nginx, a Celery worker and
beat, and stop all of them when its process group is terminated or gunicorn exits; slow
clients must not stall it; a second start must refuse before it changes anything; and
doctor, run from another shell, must find what this start runs."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import httpx
import pytest
import redis

from tests.fakes.model import FakeModel
from tests.fakes.wecom import (
    DEFAULT_CORP_ID,
    FakeWeCom,
    wecom_bot_config,
    wecom_callback,
    wecom_text_xml,
)
from tests.ops.conftest import tool
from tests.processes import REPO_ROOT, free_port, group_members, process_env, start_group, stop_group, wait_until
from tests.slow_clients import assert_answered_while_held, passive_bot_config

pytestmark = pytest.mark.slow

ADMIN_USER = "first-admin"
ADMIN_PASSWORD = "embedded default password 7"
REDIS_URL = "redis://127.0.0.1:6379/13"
READY_TIMEOUT = 90  # migrate and collectstatic on a busy two-core machine, then boot
# What an operator would not have set on a fresh machine; the test process has some of them.
UNSET = (
    "DATABASE_URL",
    "ALLOWED_HOSTS",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "SWITCHBOARD_SECRET_KEYS",
    "SWITCHBOARD_SECRET_KEYS_FILE",
    "SWITCHBOARD_ENV",
    "DEBUG",
    "STATIC_ROOT",
    "CELERY_BROKER_URL",
)


@dataclass
class Started:
    proc: subprocess.Popen
    base_url: str
    env: dict[str, str]
    var_dir: Path
    log: Path
    name: str  # key prefix, queue and worker name of this start
    port: int
    ready: dict = field(default_factory=dict)  # the first 200 answer of /readyz

    def commands(self) -> list[str]:
        return [member.cmdline for member in group_members(self.proc.pid)]

    def output(self) -> str:
        return self.log.read_text()


def _ready(base_url: str) -> dict:
    response = httpx.get(f"{base_url}/readyz", timeout=5)
    return response.json() if response.status_code == 200 else {}


def _pong(node: str, env: dict[str, str]) -> bool:
    ping = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/celery"), "-A", "config", "inspect", "ping", "-d", node, "--timeout", "3"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return ping.returncode == 0 and f"{node}: OK" in ping.stdout and "pong" in ping.stdout


@pytest.fixture
def started(tmp_path, request):
    """start.sh running and ready (GET /readyz is 200); its whole process group is killed
    afterwards whatever the test did."""
    tool("nginx")  # start.sh puts nginx in front of gunicorn
    port = free_port()
    name = f"{os.environ['SWITCHBOARD_TEST_RUN']}-{request.node.name[-20:]}"
    var_dir = tmp_path / "var"
    env = process_env(
        drop=UNSET,
        SWITCHBOARD_VAR_DIR=str(var_dir),
        REDIS_URL=REDIS_URL,
        CACHE_KEY_PREFIX=name,
        CELERY_TASK_DEFAULT_QUEUE=name,
        SWITCHBOARD_BIND=f"127.0.0.1:{port}",
        SWITCHBOARD_ADMIN_USER=ADMIN_USER,
        SWITCHBOARD_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    # A test may change the environment: {port} stands for this start's port.
    env.update({key: value.format(port=port) for key, value in getattr(request, "param", {}).items()})
    log = tmp_path / "start.log"
    proc = start_group(["bash", "scripts/start.sh", "--no-install"], env, log)
    run = Started(proc, f"http://127.0.0.1:{port}", env, var_dir, log, name, port)
    try:
        run.ready = wait_until(lambda: _ready(run.base_url), READY_TIMEOUT, "GET /readyz is 200", alive=proc)
        yield run
    finally:
        stop_group(proc)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"*{name}*", count=500):
            client.delete(key)
        print(run.output()[-6000:])  # pytest shows it when the test fails


def test_start_sh_brings_up_and_stops_the_embedded_default(started):
    checks = {check: result["ok"] for check, result in started.ready["checks"].items()}
    assert {"database": True, "redis": True, "broker": True}.items() <= checks.items()
    # The worker start.sh launched shows up on /readyz once its first heartbeat is in.
    wait_until(
        lambda: httpx.get(f"{started.base_url}/readyz", timeout=5).json()["checks"]["worker"]["ok"],
        30,
        "the Celery worker's heartbeat on /readyz",
    )
    assert httpx.get(f"{started.base_url}/healthz", timeout=5).json() == {"status": "ok"}

    # The console sends a stranger to the 2FA sign-in, and the admin created from the
    # environment is sent on to set up an authenticator app.
    with httpx.Client(base_url=started.base_url, timeout=10, follow_redirects=True) as browser:
        page = browser.get("/admin/")
        assert page.status_code == 200
        assert page.url.path == "/admin/2fa/login/"
        assert [r.status_code for r in page.history] == [302, 302]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        signed_in = browser.post(
            "/admin/2fa/login/",
            follow_redirects=False,
            data={"csrfmiddlewaretoken": token, "username": ADMIN_USER, "password": ADMIN_PASSWORD},
        )
        assert signed_in.status_code == 302
        assert signed_in.headers["location"].startswith("/admin/2fa/enroll/")

    # SQLite in the var dir (not some other database), holding the admin.
    var_dir = started.var_dir
    with sqlite3.connect(var_dir / "switchboard.sqlite3") as db:
        admins = db.execute("SELECT username FROM auth_user WHERE is_superuser AND is_staff").fetchall()
    assert admins == [(ADMIN_USER,)]
    for secret in ("secret_key", "switchboard_secret_keys"):
        assert (var_dir / secret).stat().st_mode & 0o777 == 0o600, secret
    assert len((var_dir / "secret_key").read_text().strip()) >= 50
    assert len(base64.b64decode((var_dir / "switchboard_secret_keys").read_text().strip())) == 32
    assert (var_dir / "switchboard.sqlite3").stat().st_mode & 0o077 == 0
    assert (var_dir / "static" / "staticfiles.json").exists(), "collectstatic did not run"

    # The worker is connected to the broker and answers a ping addressed to it alone
    # (it may still be booting when gunicorn already answers).
    node = f"{started.name}@{socket.gethostname()}"
    wait_until(lambda: _pong(node, started.env), 60, f"Celery worker {node} answers a ping", interval=1)
    wait_until(lambda: list(var_dir.glob("celerybeat-schedule*")), 30, "Celery beat writes its schedule file")
    commands = started.commands()
    assert any("gunicorn config.wsgi:application" in c for c in commands), commands
    assert any(f"--bind 127.0.0.1:{started.port + 1} " in c and "--worker-class gthread" in c for c in commands)
    assert any(c.startswith("nginx: master process") for c in commands), commands
    assert any("celery -A config worker" in c for c in commands), commands
    assert any("celery -A config beat" in c for c in commands), commands

    assert stop_group(started.proc), "start.sh left processes behind after SIGTERM"
    assert group_members(started.proc.pid) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{started.base_url}/healthz", timeout=5)
    output = started.output()
    assert [int(n) for n in re.findall(r"^\[(\d)/8\]", output, re.MULTILINE)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert "authenticator app" in output
    assert "FAILED" not in output


def test_worker_and_beat_stop_when_gunicorn_exits(started):
    wait_until(lambda: any("celery -A config beat" in c for c in started.commands()), 30, "beat runs")
    (master,) = (
        m.pid
        for m in group_members(started.proc.pid)
        if m.ppid == started.proc.pid and "gunicorn config.wsgi:application" in m.cmdline
    )
    os.kill(master, signal.SIGTERM)  # only gunicorn: the script must stop the rest itself

    assert started.proc.wait(timeout=60) == 0
    wait_until(lambda: not started.commands(), 30, "no process of start.sh is left")
    assert "gunicorn stopped" in started.output()


def test_a_failing_step_is_named_with_its_fix(tmp_path):
    env = process_env(drop=UNSET, SWITCHBOARD_VAR_DIR=str(tmp_path / "var"), REDIS_URL="redis://192.0.2.1:6379/0")
    result = subprocess.run(
        ["bash", "scripts/start.sh", "--no-install"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "FAILED at step 2/8 (Redis): no Redis answers at 192.0.2.1:6379" in result.stderr
    assert "How to fix: start Redis on 192.0.2.1:6379, or point REDIS_URL at" in result.stderr
    assert "[3/8]" not in result.stdout


def _manage(started: Started, *args: str, stdin: str | None = None, drop: tuple[str, ...] = ()):
    env = {key: value for key, value in started.env.items() if key not in drop}
    return subprocess.run(
        [str(REPO_ROOT / ".venv/bin/python"), "manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_slow_clients_and_waiting_wechat_users_do_not_stall_a_callback(started):
    """nginx answers SWITCHBOARD_BIND and hands gunicorn only requests it has read whole:
    a dozen connections trickling their headers and two WeChat users waiting for a slow
    model's passive reply do not keep a signed callback waiting."""
    wecom, model, slow_model = FakeWeCom().start(), FakeModel().start(), FakeModel(delay=20).start()
    bot = SimpleNamespace(
        uuid=uuid4(),
        app_id=DEFAULT_CORP_ID,
        token="embedded-test-token",
        encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    )
    try:
        config = {
            "backends": [
                {"name": "quick", "kind": "openai", "base_url": f"{model.url}/v1", "model": "m1", "timeout": 30},
                {"name": "slow", "kind": "openai", "base_url": f"{slow_model.url}/v1", "model": "m1", "timeout": 30},
            ],
            "bots": [
                wecom_bot_config(bot, wecom.url, "quick"),
                passive_bot_config("slow"),
            ],
        }
        imported = _manage(started, "import_config", "-", stdin=json.dumps(config))
        assert imported.returncode == 0, imported.stdout + imported.stderr

        def send() -> None:
            query, body = wecom_callback(bot, wecom_text_xml(DEFAULT_CORP_ID, "zhangsan", "hello", 9001, 1000002))
            response = httpx.post(
                f"{started.base_url}/callback/wecom/{bot.uuid}/?{query}",
                content=body,
                headers={"Content-Type": "text/xml"},
                timeout=30,
            )
            assert response.status_code == 200 and response.content == b"", response.text

        took = assert_answered_while_held(send, "127.0.0.1", started.port, "127.0.0.1", started.base_url)
        print(f"a callback while slow clients held the port: {took:.2f} s")
        [sent] = wecom.wait_for(r"/message/send", 1, timeout=60)
        assert sent.json()["text"]["content"] == "[m1] hello (history=0)"
    finally:
        for server in (wecom, model, slow_model):
            server.stop()


def test_a_second_start_refuses_before_it_changes_anything(started, tmp_path):
    metrics = sorted(p.name for p in (started.var_dir / "metrics").iterdir())
    assert metrics, "the running instance has metrics to lose"
    pid = started.proc.pid
    again = subprocess.run(
        ["bash", "scripts/start.sh", "--no-install"],
        cwd=REPO_ROOT,
        env=started.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert (
        f"Switchboard already runs from {started.var_dir}: scripts/start.sh (pid {pid}) serves "
        f"127.0.0.1:{started.port}."
    ) in again.stderr
    assert "Nothing was changed." in again.stderr
    assert "[1/8]" not in again.stdout
    # The live instance kept its counters and still answers.
    assert set(metrics) <= {p.name for p in (started.var_dir / "metrics").iterdir()}
    assert httpx.get(f"{started.base_url}/healthz", timeout=5).status_code == 200

    # Another var dir on the same port: refused on the port, its var dir left empty.
    other = tmp_path / "other-var"
    env = {**started.env, "SWITCHBOARD_VAR_DIR": str(other)}
    taken = subprocess.run(
        ["bash", "scripts/start.sh", "--no-install"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert taken.returncode == 1
    bind = f"SWITCHBOARD_BIND=127.0.0.1:{started.port}"
    assert f"Port {started.port} ({bind}) is taken by another program" in taken.stderr
    assert "Nothing was changed." in taken.stderr
    assert sorted(p.name for p in other.iterdir()) == ["start.lock"]


def test_doctor_in_another_shell_finds_this_start(started):
    """doctor without this start's SWITCHBOARD_BIND (another terminal) checks the port
    start.sh serves, not the default one, and finds the worker named after this
    installation's queue."""
    wait_until(
        lambda: _pong(f"{started.name}@{socket.gethostname()}", started.env), 60, "the worker answers", interval=1
    )
    result = _manage(started, "doctor", "--json", "--skip", "beat", drop=("SWITCHBOARD_BIND",))
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["port"]["status"] == "ok", checks["port"]
    assert checks["port"]["detail"] == f"Switchboard answers /healthz on 127.0.0.1:{started.port} through nginx"
    assert checks["worker"]["status"] == "ok", checks["worker"]
    assert f"{started.name}@{socket.gethostname()}" in checks["worker"]["detail"]


def _lan_address() -> str:
    """This machine's first address other than loopback ("" when it has none)."""
    found = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    return next((address for address in found if ":" not in address and not address.startswith("127.")), "")


@pytest.mark.parametrize(
    "started", [{"SWITCHBOARD_BIND": "0.0.0.0:{port}", "ADMIN_ALLOWED_CIDRS": "127.0.0.0/8"}], indirect=True
)
def test_the_client_address_is_still_the_clients_behind_nginx(started):
    """nginx is the first hop: start.sh trusts its X-Forwarded-For (TRUSTED_PROXIES), so a
    client on the network is not taken for 127.0.0.1 and let into a console kept to
    loopback, and what a client writes in X-Forwarded-For itself is not believed."""
    lan = _lan_address()
    if not lan:
        pytest.skip("this machine has no address but loopback")
    from_the_network = httpx.get(
        f"http://{lan}:{started.port}/admin/", timeout=10, headers={"X-Forwarded-For": "127.0.0.1"}
    )
    assert from_the_network.status_code == 403, from_the_network.text[:300]
    from_here = httpx.get(f"http://127.0.0.1:{started.port}/admin/", timeout=10, follow_redirects=False)
    assert from_here.status_code == 302
