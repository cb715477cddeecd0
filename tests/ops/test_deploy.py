"""deploy.sh, for real, into a scratch root (--root) on loopback ports: the steps, the
units, the nginx site, the logrotate policy, the services running under deploy.sh's own
supervisor (this machine has no systemd), a signed WeCom callback through nginx's HTTPS
answered at the fake WeCom, /metrics with the token, doctor green and then red with the
worker stopped, and a second run upgrading in place without losing anything."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
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
from tests.processes import REPO_ROOT, free_port, group_members, process_env, wait_until
from tests.slow_clients import assert_answered_while_held, passive_bot_config
from tests.test_deploy_check import _variables_read_by_settings

DEPLOY = str(REPO_ROOT / "deploy.sh")
STEPS = [
    "Check the system: OS, Python, libraries, memory, disk",
    "System packages: redis-server, nginx, openssl, logrotate, python3-venv",
    "Service user and directories",
    "Application code and virtualenv",
    "Settings and secrets",
    "Redis",
    "Database migrations",
    "Static files",
    "First admin",
    "Default model backend",
    "nginx on",
    "logrotate for",
    "Services: gunicorn on",
    "Check and summary",
]
# What an operator's shell would not have; the test process has some of them.
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
    "REDIS_URL",
    "SWITCHBOARD_VAR_DIR",
    "CACHE_KEY_PREFIX",
    "CELERY_TASK_DEFAULT_QUEUE",
    "SWITCHBOARD_DEPLOY_ROOT",
    "PROMETHEUS_MULTIPROC_DIR",
    "LOG_DIR",
)
REDIS_URL = "redis://127.0.0.1:6379/13"
ADMIN_USER, ADMIN_PASSWORD = "first-admin", "deploy test password 42"


def run_deploy(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", DEPLOY, *args],
        cwd=REPO_ROOT,
        env=process_env(drop=UNSET, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


# -- without deploying --------------------------------------------------------------------


def test_help_lists_the_seed_flags():
    result = run_deploy("--help")
    assert result.returncode == 0
    for flag in (
        "--model_type=dialog",
        "--gpu=false",
        "--port=18789",
        "--domain",
        "--admin-email",
        "--database-url",
        "--dry-run",
        "--root",
    ):
        assert flag in result.stdout


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    root = tmp_path / "root"
    result = run_deploy(
        "--dry-run",
        f"--root={root}",
        "--model_type=dialog",
        "--gpu=true",
        "--port=18789",
        "--domain=bots.example.com",
        "--admin-email=ops@example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    headers = re.findall(r"^\[(\d+)/14\] (.*)$", result.stdout, re.MULTILINE)
    assert [int(n) for n, _ in headers] == list(range(1, 15))
    for (_, title), expected in zip(headers, STEPS, strict=True):
        assert title.startswith(expected), (title, expected)
    out = result.stdout
    assert "would run: manage migrate --noinput" in out
    assert "would create model backend 'local' (qwen2.5:7b-instruct at http://127.0.0.1:11434/v1)" in out
    assert f"would write {root}/etc/systemd/system/switchboard-web.service" in out
    assert f"would write {root}/etc/nginx/sites-available/switchboard.conf" in out
    assert f"would write {root}/etc/logrotate.d/switchboard" in out
    assert "Console:    https://bots.example.com/admin/" in out
    assert "Dry run: nothing was changed." in out
    assert not root.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu=maybe"], "--gpu=maybe: use true or false."),
        (["--model_type=vision"], "--model_type=vision: the only model type is dialog"),
        (["--port=http"], "port=http is not a positive whole number."),
        (["--tls-cert=/x.pem"], "--tls-cert and --tls-key go together."),
        (["--frobnicate"], "Unknown option: --frobnicate"),
    ],
)
def test_bad_options_are_refused_before_anything_happens(tmp_path, args, message):
    result = run_deploy(f"--root={tmp_path / 'root'}", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "root").exists()


def test_a_failing_step_is_named_with_its_fix(tmp_path):
    result = run_deploy(
        f"--root={tmp_path / 'root'}", f"--venv={REPO_ROOT / '.venv'}", "--redis-url=redis://192.0.2.1:6379/0"
    )
    assert result.returncode == 1
    assert "FAILED at step 6/14 (Redis): no Redis answers at 192.0.2.1:6379" in result.stderr
    assert "How to fix: start Redis on 192.0.2.1:6379, or point REDIS_URL at" in result.stderr
    assert "[7/14]" not in result.stdout


# -- a real deployment ----------------------------------------------------------------------


@dataclass
class Deployment:
    root: Path
    name: str
    port: int
    gunicorn_port: int
    https_port: int
    http_port: int
    wecom: FakeWeCom
    bot: SimpleNamespace
    first_run: subprocess.CompletedProcess

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def log_dir(self) -> Path:
        return self.root / "var/log/switchboard"

    @property
    def run_dir(self) -> Path:
        return self.root / "run/switchboard"

    @property
    def cert(self) -> str:
        return str(self.etc / "switchboard/tls/fullchain.pem")

    def bin(self, name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.root / "usr/local/bin" / name), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
            env=process_env(drop=UNSET),
        )

    def https(self) -> httpx.Client:
        """A client that trusts the self-signed certificate deploy.sh made, and nothing else."""
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.https_port}",
            timeout=10,
            verify=ssl.create_default_context(cafile=self.cert),
            headers={"Host": f"sb.test:{self.https_port}"},
        )

    def wait_ready(self) -> None:
        with self.https() as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, 60, "Switchboard answers through nginx")

    def services(self) -> dict[str, int | None]:
        state = json.loads((self.run_dir / "supervisor.json").read_text())
        return {name: entry["pid"] for name, entry in state.items()}

    def send(self, client: httpx.Client, text: str, msg_id: int, user: str = "zhangsan") -> None:
        query, body = wecom_callback(self.bot, wecom_text_xml(DEFAULT_CORP_ID, user, text, msg_id, 1000002))
        response = client.post(
            f"/callback/wecom/{self.bot.uuid}/?{query}", content=body, headers={"Content-Type": "text/xml"}
        )
        assert response.status_code == 200 and response.content == b"", response.text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy") / "root"
    name = f"{os.environ['SWITCHBOARD_TEST_RUN']}-deploy"
    ports = {"port": free_port(), "gunicorn": free_port(), "https": free_port(), "http": free_port()}
    wecom, model = FakeWeCom().start(), FakeModel().start()
    bot = SimpleNamespace(
        uuid=uuid4(),
        app_id=DEFAULT_CORP_ID,
        token="deploy-test-token",
        encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    )
    started_pids: dict[str, int | None] = {}
    try:
        first = run_deploy(
            f"--root={root}",
            f"--venv={REPO_ROOT / '.venv'}",
            "--listen=127.0.0.1",
            "--domain=sb.test",
            "--admin-email=ops@sb.test",
            f"--port={ports['port']}",
            f"--gunicorn-port={ports['gunicorn']}",
            f"--https-port={ports['https']}",
            f"--http-port={ports['http']}",
            f"--redis-url={REDIS_URL}",
            "--gpu=false",
            f"--model-url={model.url}/v1",
            "--model-name=m1",
            f"--set=CACHE_KEY_PREFIX={name}",
            f"--set=CELERY_TASK_DEFAULT_QUEUE={name}",
            "--set=METRICS_ALLOWED_CIDRS=192.0.2.0/24",
            SWITCHBOARD_ADMIN_USER=ADMIN_USER,
            SWITCHBOARD_ADMIN_PASSWORD=ADMIN_PASSWORD,
            SWITCHBOARD_WEB_WORKERS="2",
        )
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        deployment = Deployment(
            root, name, ports["port"], ports["gunicorn"], ports["https"], ports["http"], wecom, bot, first
        )
        config = {"bots": [wecom_bot_config(bot, wecom.url, "cloud")]}
        imported = deployment.bin("switchboard-manage", "import_config", "-", stdin=json.dumps(config))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        started_pids.update(deployment.services())
        yield deployment
    finally:
        supervisor = root / "usr/local/bin/switchboard-supervisor"
        stop = (
            subprocess.run([str(supervisor), "stop"], capture_output=True, text=True, timeout=240)
            if supervisor.exists()
            else None
        )
        wecom.stop()
        model.stop()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"*{name}*", count=500):
            client.delete(key)
        if stop is not None:
            print(stop.stdout, stop.stderr)
        for log in sorted((root / "var/log/switchboard").glob("*.log")) if root.exists() else []:
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
    # Everything deploy.sh started is gone: each service ran in a process group of its own.
    for service, pid in started_pids.items():
        if pid:
            assert not group_members(pid), f"{service} left processes behind"


@pytest.mark.slow
def test_units_site_and_policy_are_written(deployed):
    out = deployed.first_run.stdout
    assert [int(n) for n in re.findall(r"^\[(\d+)/14\]", out, re.MULTILINE)] == list(range(1, 15))
    assert "the same three services run under" in out or "run under deploy/supervisor.py, not systemd" in out
    assert "All checks passed." in out
    units = deployed.etc / "systemd/system"
    web = (units / "switchboard-web.service").read_text()
    # gunicorn on loopback only, with threads; nginx answers --port (the site, below).
    assert f"--bind 127.0.0.1:{deployed.gunicorn_port} --workers 2 --worker-class gthread --threads 4" in web
    worker = (units / "switchboard-worker.service").read_text()
    assert f"--hostname {deployed.name}@%%h" in worker  # this installation's queue names its worker
    assert f"Environment=PROMETHEUS_MULTIPROC_DIR={deployed.run_dir}/metrics" in web
    for service in ("web", "worker", "beat"):
        text = (units / f"switchboard-{service}.service").read_text()
        assert "Restart=on-failure" in text and "WantedBy=multi-user.target" in text, service
        assert f"EnvironmentFile={deployed.etc}/switchboard/switchboard.env" in text
    assert "celery -A config worker" in (units / "switchboard-worker.service").read_text()
    assert "celery -A config beat" in (units / "switchboard-beat.service").read_text()
    analyze = tool("systemd-analyze")
    for service in ("web", "worker", "beat"):
        verified = subprocess.run(
            [analyze, "verify", str(units / f"switchboard-{service}.service")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr

    env = (deployed.etc / "switchboard/switchboard.env").read_text()
    written = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", env, re.MULTILINE))
    secrets = {"SECRET_KEY_FILE", "SWITCHBOARD_SECRET_KEYS_FILE", "METRICS_TOKEN_FILE"}
    assert written - secrets <= _variables_read_by_settings(), "deploy.sh writes a variable nothing reads"
    assert "SWITCHBOARD_ENV=production" in env.splitlines()
    assert "TRUSTED_PROXIES=127.0.0.1/32,::1/128" in env.splitlines()
    assert "ALLOWED_HOSTS=sb.test,localhost,127.0.0.1" in env.splitlines()
    assert f"SWITCHBOARD_PUBLIC_URL=https://sb.test:{deployed.https_port}" in env.splitlines()
    assert f"SWITCHBOARD_GUNICORN_BIND=127.0.0.1:{deployed.gunicorn_port}" in env.splitlines()
    assert {"SWITCHBOARD_WEB_WORKERS=2", "SWITCHBOARD_WEB_THREADS=4"} <= set(env.splitlines())
    for secret in ("secret_key", "secret_keys", "metrics_token"):
        assert (deployed.etc / "switchboard" / secret).stat().st_mode & 0o777 == 0o600, secret
        assert f"{secret.upper()}_FILE" in env.replace("SWITCHBOARD_SECRET_KEYS_FILE", "SECRET_KEYS_FILE")

    site = (deployed.etc / "nginx/sites-available/switchboard.conf").read_text()
    assert f"listen 127.0.0.1:{deployed.https_port} ssl;" in site and "server_name sb.test;" in site
    assert f"listen 127.0.0.1:{deployed.port};" in site and f"server 127.0.0.1:{deployed.gunicorn_port};" in site
    clients = (deployed.etc / "nginx/snippets/switchboard-clients.conf").read_text()
    assert site.count("snippets/switchboard-clients.conf;") == 3  # every server block
    assert "client_header_timeout 10s;" in clients and "client_body_timeout 10s;" in clients
    assert f"return 301 https://$host:{deployed.https_port}$request_uri;" in site
    assert (deployed.etc / "nginx/sites-enabled/switchboard.conf").resolve() == (
        deployed.etc / "nginx/sites-available/switchboard.conf"
    )
    policy = (deployed.etc / "logrotate.d/switchboard").read_text()
    assert policy == (REPO_ROOT / "deploy/logrotate").read_text().replace(
        "/var/log/switchboard/", f"{deployed.log_dir}/"
    )


@pytest.mark.slow
def test_nginx_accepts_the_site(deployed, tmp_path):
    nginx = tool("nginx")
    site = deployed.etc / "nginx/sites-available/switchboard.conf"
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {site};\n}}\n"
    )
    checked = subprocess.run([nginx, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr

    broken = tmp_path / "broken.conf"  # the check is not vacuous
    broken.write_text(site.read_text().replace("proxy_pass http://switchboard;", "proxy_pass http://switchboard", 1))
    conf.write_text(conf.read_text().replace(str(site), str(broken)))
    assert subprocess.run([nginx, "-t", "-c", str(conf)], capture_output=True, timeout=60).returncode != 0


@pytest.mark.slow
def test_logrotate_accepts_the_policy_and_rotation_needs_no_restart(deployed, tmp_path):
    logrotate = tool("logrotate")
    policy = deployed.etc / "logrotate.d/switchboard"
    state = tmp_path / "logrotate.status"
    debug = subprocess.run([logrotate, "-d", "-s", str(state), str(policy)], capture_output=True, text=True, timeout=60)
    assert debug.returncode == 0, debug.stderr
    assert f"rotating pattern: {deployed.log_dir}/*.log" in debug.stdout + debug.stderr

    with deployed.https() as client:
        assert client.get("/healthz").status_code == 200
    forced = subprocess.run(
        [logrotate, "-f", "-s", str(state), str(policy)], capture_output=True, text=True, timeout=60
    )
    assert forced.returncode == 0, forced.stderr
    rotated = deployed.log_dir / "switchboard.log.1"
    assert '"path": "/healthz"' in rotated.read_text()
    current = deployed.log_dir / "switchboard.log"
    assert current.stat().st_mode & 0o777 == 0o644  # create 644
    with deployed.https() as client:
        request_id = client.get("/healthz").headers["X-Request-ID"]
    # The same gunicorn writes to the new file: WatchedFileHandler reopened it.
    wait_until(lambda: request_id in current.read_text(), 10, "the new log file gets the next request")
    entry = next(json.loads(x) for x in current.read_text().splitlines() if request_id in x)
    assert entry["logger"] == "switchboard.access" and entry["path"] == "/healthz"


@pytest.mark.slow
def test_a_signed_callback_through_nginx_is_answered_at_the_platform(deployed):
    with deployed.https() as client:
        deployed.send(client, "hello through nginx", 8001)
        [sent] = deployed.wecom.wait_for(r"/message/send", 1, timeout=60)
        assert sent.json()["text"]["content"] == "[m1] hello through nginx (history=0)"
        assert sent.json()["touser"] == "zhangsan"

        # The console is there too, behind the two-factor sign-in.
        console = client.get("/admin/", follow_redirects=False)
        assert console.status_code == 302 and "login" in console.headers["location"]

    # Plain HTTP: the console moves to HTTPS; a callback is proxied as it is.
    with httpx.Client(
        base_url=f"http://127.0.0.1:{deployed.http_port}", timeout=10, headers={"Host": "sb.test"}
    ) as plain:
        moved = plain.get("/admin/")
        assert moved.status_code == 301
        assert moved.headers["location"] == f"https://sb.test:{deployed.https_port}/admin/"
        deployed.send(plain, "and over http", 8002)
        deployed.wecom.wait_for(r"/message/send", 2, timeout=60)


@pytest.mark.slow
def test_metrics_through_nginx_need_the_token_and_add_up_web_and_worker(deployed):
    token = (deployed.etc / "switchboard/metrics_token").read_text().strip()
    with deployed.https() as client:
        deployed.send(client, "count me", 8101)
        sends = len(deployed.wecom.received(r"/message/send"))
        deployed.wecom.wait_for(r"/message/send", sends + 1 if sends == 0 else sends, timeout=60)
        assert client.get("/metrics").status_code == 403  # 127.0.0.1 is not in METRICS_ALLOWED_CIDRS here

        def replied() -> str:
            body = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
            return (
                body
                if re.search(
                    r'switchboard_messages_total\{bot="helpdesk",platform="wecom",'
                    r'status="replied"\} [1-9]',
                    body,
                )
                else ""
            )

        body = wait_until(replied, 30, "the worker's replies show at /metrics")
    assert re.search(r'switchboard_callbacks_total\{outcome="accepted",platform="wecom"\} [1-9]', body)  # gunicorn
    assert re.search(r'switchboard_end_to_end_seconds_count\{platform="wecom"\} [1-9]', body)  # the worker
    assert re.search(r'switchboard_model_seconds_count\{backend="cloud"\} [1-9]', body)
    assert re.search(r"switchboard_celery_workers 1\.0", body)
    assert re.search(r"switchboard_tls_certificate_expiry_timestamp_seconds \d", body)


@pytest.mark.slow
def test_doctor_is_green_and_turns_red_when_the_worker_stops(deployed):
    doctor = deployed.bin("switchboard-manage", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "FAIL" not in doctor.stdout and doctor.stdout.rstrip().endswith("All checks passed.")
    assert re.search(r"^OK +nginx +serves https://sb\.test:\d+/healthz over HTTPS$", doctor.stdout, re.MULTILINE)
    assert re.search(
        rf"^OK +port +Switchboard answers /healthz on 127\.0\.0\.1:{deployed.port} through nginx$",
        doctor.stdout,
        re.MULTILINE,
    )
    assert re.search(
        rf"^OK +worker +1 worker\(s\) consume queue '{deployed.name}': {deployed.name}@", doctor.stdout, re.MULTILINE
    )
    assert "self-signed" in doctor.stdout

    worker = deployed.services()["worker"]
    os.kill(worker, signal.SIGTERM)  # as `systemctl stop` would
    wait_until(lambda: deployed.services()["worker"] is None, 60, "the supervisor sees the worker stop")
    try:
        red = deployed.bin("switchboard-manage", "doctor")
        assert red.returncode == 1
        assert re.search(
            r"^FAIL +worker +no worker of this installation answered a ping within 3 s", red.stdout, re.MULTILINE
        )
        assert (
            f"fix: sudo switchboard-supervisor restart; see why it stopped in {deployed.log_dir}/worker.log"
            in red.stdout
        )
        assert red.stdout.rstrip().endswith("1 of 16 checks failed.")
        with deployed.https() as client:
            assert client.get("/readyz").status_code == 200  # the web side is ready as ever
        time.sleep(3)
        assert deployed.services()["worker"] is None  # a clean stop is not undone (Restart=on-failure)

        beat = deployed.services()["beat"]
        os.kill(beat, signal.SIGKILL)  # a crash is
        wait_until(lambda: deployed.services()["beat"] not in (None, beat), 30, "the supervisor restarts beat")
    finally:
        restarted = deployed.bin("switchboard-supervisor", "restart")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        deployed.wait_ready()


@pytest.mark.slow
def test_running_it_again_upgrades_in_place_and_keeps_everything(deployed):
    with deployed.https() as client:
        sent = len(deployed.wecom.received(r"/message/send"))
        deployed.send(client, "before the upgrade", 8200, user="lisi")
        deployed.wecom.wait_for(r"/message/send", sent + 1, timeout=60)
    secrets_dir = deployed.etc / "switchboard"
    before = {name: (secrets_dir / name).read_text() for name in ("secret_key", "secret_keys", "metrics_token")}
    cert = Path(deployed.cert).read_bytes()
    env_file = secrets_dir / "switchboard.env"
    env_file.write_text(env_file.read_text() + "OTP_TOTP_ISSUER=Acme Bots\n")

    again = run_deploy(f"--root={deployed.root}")  # the last run's options, --venv too
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    assert {name: (secrets_dir / name).read_text() for name in before} == before
    assert Path(deployed.cert).read_bytes() == cert
    assert "kept the existing Django SECRET_KEY" in again.stdout
    assert "an admin account exists" in again.stdout
    assert "1 model backend(s) exist: leaving them as they are" in again.stdout
    callback = f"https://sb.test:{deployed.https_port}/callback/wecom/{deployed.bot.uuid}/"
    assert f"helpdesk (wecom): {callback}" in again.stdout
    env = env_file.read_text().splitlines()
    assert "OTP_TOTP_ISSUER=Acme Bots" in env
    assert "using the virtualenv" in again.stdout
    assert "--workers 2 " in (deployed.etc / "systemd/system/switchboard-web.service").read_text()
    assert f"SWITCHBOARD_GUNICORN_BIND=127.0.0.1:{deployed.gunicorn_port}" in env  # kept too
    releases = sorted((deployed.root / "opt/switchboard/releases").iterdir())
    assert len(releases) == 2 and (deployed.root / "opt/switchboard/app").resolve() == releases[-1]
    assert f"SWITCHBOARD_BIND=127.0.0.1:{deployed.port}" in env  # the last run's options
    assert "METRICS_ALLOWED_CIDRS=192.0.2.0/24" in env
    issuer = deployed.bin(
        "switchboard-manage", "shell", "-c", "from django.conf import settings; print(settings.OTP_TOTP_ISSUER)"
    )
    assert issuer.stdout.strip().splitlines()[-1] == "Acme Bots"

    with deployed.https() as client:
        sent = len(deployed.wecom.received(r"/message/send"))
        deployed.send(client, "after the upgrade", 8201, user="lisi")
        last = deployed.wecom.wait_for(r"/message/send", sent + 1, timeout=60)[-1]
    assert last.json()["text"]["content"] == "[m1] after the upgrade (history=2)"  # the context survived too


@pytest.mark.slow
def test_slow_clients_and_waiting_wechat_users_do_not_stall_a_callback(deployed):
    """The port platforms call directly (--port) is nginx's: connections trickling their
    headers and WeChat users waiting for a slow model's passive reply hold nginx
    connections and gunicorn threads, never all of gunicorn, and a normal callback is
    answered at once. gunicorn itself is not reachable from other machines."""
    slow_model = FakeModel(delay=20).start()
    try:
        config = {
            "backends": [
                {"name": "slow", "kind": "openai", "base_url": f"{slow_model.url}/v1", "model": "m1", "timeout": 30}
            ],
            "bots": [passive_bot_config("slow")],
        }
        imported = deployed.bin("switchboard-manage", "import_config", "-", stdin=json.dumps(config))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        base_url = f"http://127.0.0.1:{deployed.port}"
        with httpx.Client(base_url=base_url, timeout=30, headers={"Host": "sb.test"}) as plain:
            took = assert_answered_while_held(
                lambda: deployed.send(plain, "past the slow ones", 8301),
                "127.0.0.1",
                deployed.port,
                "sb.test",
                base_url,
            )
        print(f"a callback while slow clients held the port: {took:.2f} s")
    finally:
        slow_model.stop()
    gunicorn = next(
        line
        for line in (deployed.etc / "switchboard/switchboard.env").read_text().splitlines()
        if line.startswith("SWITCHBOARD_GUNICORN_BIND=")
    )
    assert gunicorn == f"SWITCHBOARD_GUNICORN_BIND=127.0.0.1:{deployed.gunicorn_port}"
