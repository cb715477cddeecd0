"""The passive-mode waits: defaults, and values that would lose answers refused at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

REPO_ROOT = Path(__file__).resolve().parents[4]


def load_settings(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_the_defaults_fit_wechats_five_seconds():
    assert settings.WECHAT_PASSIVE_WAIT_MS == 4500 < 5000 < settings.WECHAT_PASSIVE_HOLD_MS == 5500


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("WECHAT_PASSIVE_WAIT_MS", "4900", "WECHAT_PASSIVE_WAIT_MS=4900 is too long"),
        ("WECHAT_PASSIVE_HOLD_MS", "4000", "WECHAT_PASSIVE_HOLD_MS=4000 must be at least 5000"),
        ("WECHAT_PASSIVE_WAIT_MS", "4.5", "WECHAT_PASSIVE_WAIT_MS='4.5' is not a whole number"),
    ],
)
def test_values_that_would_lose_answers_stop_start_up(name, value, complaint):
    result = load_settings(**{name: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and complaint in result.stderr


def test_a_shorter_wait_is_accepted():
    assert load_settings(WECHAT_PASSIVE_WAIT_MS="3000").returncode == 0
