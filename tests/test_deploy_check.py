"""Production settings, as an operator would run them: `manage.py check --deploy` in a
fresh process with only the environment that docs/configuration.md asks for."""

from __future__ import annotations

import ast
import base64
import secrets
import subprocess
import sys

import pytest

from tests.processes import REPO_ROOT, free_port, process_env

# Everything settings.py may read, so the outer test run's values do not leak in.
SETTINGS_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CACHE_KEY_PREFIX",
    "CELERY_TASK_DEFAULT_QUEUE",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "SWITCHBOARD_SECRET_KEYS",
    "SWITCHBOARD_SECRET_KEYS_FILE",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "DEBUG",
    "SWITCHBOARD_ENV",
    "SWITCHBOARD_VAR_DIR",
    "STATIC_ROOT",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
)


def production_env(tmp_path, **changes: str | None) -> dict[str, str]:
    """The documented production environment; a change of None removes that variable."""
    values = {
        "SWITCHBOARD_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "SWITCHBOARD_SECRET_KEYS": base64.b64encode(secrets.token_bytes(32)).decode(),
        "ALLOWED_HOSTS": "bots.example.com",
        # Never contacted by `check`: a closed port makes any attempt fail loudly.
        "DATABASE_URL": f"postgres://switchboard@127.0.0.1:{free_port()}/switchboard",
        "SWITCHBOARD_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    values.update(changes)
    return process_env(drop=SETTINGS_VARIABLES, **{k: v for k, v in values.items() if v is not None})


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_documented_production_environment_passes_check_deploy(tmp_path):
    result = check_deploy(production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNING" not in result.stdout + result.stderr
    # Production generates nothing: every secret came from the environment.
    assert not (tmp_path / "var" / "secret_key").exists()


def test_secrets_can_come_from_files(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text(secrets.token_urlsafe(64) + "\n")
    ring_file = tmp_path / "secret_keys"
    ring_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    env = production_env(
        tmp_path,
        SECRET_KEY=None,
        SECRET_KEY_FILE=str(key_file),
        SWITCHBOARD_SECRET_KEYS=None,
        SWITCHBOARD_SECRET_KEYS_FILE=str(ring_file),
    )
    result = check_deploy(env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"SECRET_KEY": None}, "SECRET_KEY is not set"),
        ({"SWITCHBOARD_SECRET_KEYS": None}, "SWITCHBOARD_SECRET_KEYS is not set"),
        (
            {"SWITCHBOARD_SECRET_KEYS": f"{base64.b64encode(bytes(32)).decode()},c2hvcnQ="},
            "SWITCHBOARD_SECRET_KEYS entry 2 is not a base64-encoded 32-byte key",
        ),
        ({"ALLOWED_HOSTS": None}, "ALLOWED_HOSTS is not set"),
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"SWITCHBOARD_ENV": "staging"}, "SWITCHBOARD_ENV='staging'"),
        ({"SECRET_KEY": None, "SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY_FILE="),
    ],
    ids=[
        "no-secret-key",
        "no-encryption-keys",
        "short-encryption-key",
        "no-allowed-hosts",
        "debug-maybe",
        "unknown-env",
        "unreadable-file",
    ],
)
def test_production_refuses_to_start_without_what_it_needs(tmp_path, changes, message):
    result = check_deploy(production_env(tmp_path, **changes))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_check_deploy_catches_debug_in_production(tmp_path):
    """check --deploy is not vacuous here: DEBUG on in production is reported."""
    result = check_deploy(production_env(tmp_path, DEBUG="true"))
    assert result.returncode != 0
    assert "security.W018" in result.stdout + result.stderr


def _variables_read_by_settings() -> set[str]:
    readers = {"env_str", "env_bool", "env_int", "env_list", "env_networks", "env_secret", "secret_or_generated"}
    tree = ast.parse((REPO_ROOT / "config" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in readers and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def test_every_variable_settings_reads_is_documented():
    names = _variables_read_by_settings()
    assert {"DATABASE_URL", "SECRET_KEY", "SWITCHBOARD_SECRET_KEYS"} <= names  # the parser finds them
    documented = (REPO_ROOT / "docs" / "configuration.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in documented)
    assert not missing, f"docs/configuration.md does not describe: {', '.join(missing)}"
