"""deploy/.env.example describes every variable the settings read, and nothing else."""

from __future__ import annotations

import re

from tests.processes import REPO_ROOT
from tests.test_deploy_check import _variables_read_by_settings

EXAMPLE = REPO_ROOT / "deploy" / ".env.example"
# Read by the scripts and prometheus_client rather than by the settings.
SCRIPT_VARIABLES = {
    "PROMETHEUS_MULTIPROC_DIR",
    "SWITCHBOARD_WEB_WORKERS",
    "SWITCHBOARD_ADMIN_USER",
    "SWITCHBOARD_ADMIN_PASSWORD",
    "SWITCHBOARD_ADMIN_EMAIL",
    "SWITCHBOARD_MODEL_API_KEY",
}


def listed() -> list[str]:
    """KEY of every `KEY=value` and `#KEY=value` line."""
    return re.findall(r"^#?([A-Z][A-Z0-9_]*)=", EXAMPLE.read_text(), re.MULTILINE)


def test_every_variable_the_settings_read_is_in_the_example():
    names = listed()
    assert len(names) == len(set(names)), "a variable is listed twice"
    read = _variables_read_by_settings()
    secrets = {f"{name}_FILE" for name in ("SECRET_KEY", "SWITCHBOARD_SECRET_KEYS", "METRICS_TOKEN")}
    assert read - set(names) == set(), "add these to deploy/.env.example"
    assert set(names) - read - secrets - SCRIPT_VARIABLES == set(), "the settings do not read these"


def test_each_variable_is_explained():
    """Above each variable (or group of variables) there is a comment saying what it is."""
    variable = re.compile(r"^#?[A-Z][A-Z0-9_]*=")
    lines = EXAMPLE.read_text().splitlines()
    for index, text in enumerate(lines):
        if variable.match(text):
            above = next(line for line in reversed(lines[:index]) if not variable.match(line))
            assert above.startswith("# ") and len(above) > 10, f"{text}: no explanation above it"
