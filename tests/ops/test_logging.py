"""JSON log lines: what each carries (request id, bot, platform, message id), that no
credential reaches them, and that the file in LOG_DIR survives logrotate moving it."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import subprocess
import sys
import uuid

import pytest
from celery.signals import task_prerun

from config import jsonlog
from config.jsonlog import JsonFormatter, bind_log_context
from tests.processes import REPO_ROOT, process_env


def log_context_now() -> dict:
    return jsonlog._context.get() or {}


def record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    made = logging.getLogger("switchboard.test").makeRecord(
        "switchboard.test", logging.WARNING, __file__, 1, message, args, exc_info, extra=extra
    )
    return made


@pytest.fixture(autouse=True)
def _empty_log_context():
    token = jsonlog._context.set(None)
    yield
    jsonlog._context.reset(token)


@pytest.fixture
def json_lines():
    """What the JSON handler writes while the test runs, formatted when it is logged."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def formatted(made: logging.LogRecord) -> dict:
    line = JsonFormatter().format(made)
    assert "\n" not in line
    return json.loads(line)


def test_a_line_is_one_json_object_with_context_and_extra_fields():
    bind_log_context(message_id=42, bot="b1", platform="wecom", nothing=None)
    entry = formatted(record("sent %s parts", 2, status=200))
    assert entry["message"] == "sent 2 parts"
    assert entry["level"] == "WARNING" and entry["logger"] == "switchboard.test"
    assert entry["time"].endswith("+00:00")
    assert {k: entry[k] for k in ("message_id", "bot", "platform", "status")} == {
        "message_id": "42",
        "bot": "b1",
        "platform": "wecom",
        "status": 200,
    }
    assert "nothing" not in entry


def test_credentials_in_urls_are_masked_in_message_fields_and_tracebacks():
    url = "https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=S3CRET-VALUE"
    try:
        raise RuntimeError(f"failed: {url}&access_token=T0KEN-VALUE")
    except RuntimeError:
        made = record("GET %s", url, exc_info=sys.exc_info(), target=url)
    line = JsonFormatter().format(made)
    assert "S3CRET-VALUE" not in line and "T0KEN-VALUE" not in line
    entry = json.loads(line)
    assert "corpsecret=***" in entry["message"] and "corpsecret=***" in entry["target"]
    assert "access_token=***" in entry["exception"]


def test_each_celery_task_starts_with_a_fresh_context():
    bind_log_context(message_id=1, bot="old")
    task_prerun.send(sender=None, task_id="t-2", task=None)
    assert log_context_now() == {"task_id": "t-2"}


@pytest.mark.django_db
def test_every_request_gets_an_id_and_one_access_line(client, json_lines, settings):
    response = client.get("/healthz?token=do-not-log-me")
    generated = response["X-Request-ID"]
    assert len(generated) == 32
    [line] = [e for e in json_lines() if e["logger"] == "switchboard.access"]
    assert (line["method"], line["path"], line["status"], line["request_id"]) == ("GET", "/healthz", 200, generated)
    assert line["duration_ms"] >= 0 and line["client"] == "127.0.0.1"
    assert "do-not-log-me" not in json.dumps(json_lines())

    # The proxy's id (nginx's $request_id) is kept; a client's is not, nor nonsense.
    nginx_id = "0123456789abcdef0123456789abcdef"
    assert client.get("/healthz", HTTP_X_REQUEST_ID=nginx_id)["X-Request-ID"] != nginx_id  # not a proxy
    settings.TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
    assert client.get("/healthz", HTTP_X_REQUEST_ID=nginx_id)["X-Request-ID"] == nginx_id
    forged = client.get("/healthz", HTTP_X_REQUEST_ID='"}\n{"level": "CRITICAL"')["X-Request-ID"]
    assert len(forged) == 32 and "{" not in forged


@pytest.mark.django_db
def test_a_callbacks_lines_name_the_platform_and_the_bot(client, json_lines, make_bot):
    bot = make_bot(token="t" * 12, encoding_aes_key="k" * 43)
    response = client.post(
        f"{bot.callback_path}?msg_signature=S1GNATURE&timestamp=1&nonce=1", b"<xml/>", content_type="text/xml"
    )
    assert response.status_code == 400
    lines = json_lines()
    by_logger = {line["logger"]: line for line in lines}
    assert {"switchboard.callbacks", "switchboard.access", "django.request"} <= set(by_logger), lines
    # Every line of the request carries its id, also Django's own "Bad Request" line.
    assert {line["request_id"] for line in lines} == {response["X-Request-ID"]}
    for name in ("switchboard.callbacks", "switchboard.access"):
        assert (by_logger[name]["platform"], by_logger[name]["bot"]) == ("wecom", str(bot.uuid))
    assert by_logger["django.request"]["request"] == f"POST {bot.callback_path}"
    assert "S1GNATURE" not in json.dumps(lines)
    assert log_context_now() == {}, "the request's context must not outlive it"


def test_the_log_file_is_json_and_survives_rotation(tmp_path):
    """The real settings in a fresh process: LOG_DIR gets JSON lines; after logrotate's
    rename the process writes to a new file without being restarted."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    script = """
import logging, os, sys
log = logging.getLogger("switchboard.rotation")
log.warning("before %s", "https://api.example/x?access_token=SECRET-TOKEN-1")
os.rename(sys.argv[1] + "/switchboard.log", sys.argv[1] + "/switchboard.log.1")
log.warning("after rotation")
"""
    env = process_env(LOG_DIR=str(log_dir), LOG_STDOUT="false", DJANGO_SETTINGS_MODULE="tests.settings")
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", f"import sys; sys.argv = ['', {str(log_dir)!r}]\n{script}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "before" not in result.stdout  # LOG_STDOUT=false
    rotated = [json.loads(line) for line in (log_dir / "switchboard.log.1").read_text().splitlines()]
    current = [json.loads(line) for line in (log_dir / "switchboard.log").read_text().splitlines()]
    assert [e["message"] for e in rotated if e["logger"] == "switchboard.rotation"] == [
        "before https://api.example/x?access_token=***"
    ]
    assert [e["message"] for e in current if e["logger"] == "switchboard.rotation"] == ["after rotation"]


def test_a_log_dir_that_does_not_exist_stops_start_up(tmp_path):
    missing = tmp_path / str(uuid.uuid4())
    env = process_env(LOG_DIR=str(missing), DJANGO_SETTINGS_MODULE="tests.settings")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert f"LOG_DIR='{missing}' is not a directory" in result.stderr
