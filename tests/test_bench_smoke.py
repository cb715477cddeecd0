"""A smoke run of `python -m bench` (a few seconds per part), so the benchmark cannot rot.
It asserts that every part ran and counted, never on a time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import database_url_for_subprocess
from tests.processes import REPO_ROOT, process_env

pytestmark = pytest.mark.slow


def test_the_bench_runs_every_part_and_writes_its_figures(transactional_db, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-migrate", "--out", str(out)],
        cwd=REPO_ROOT,
        env=process_env(DATABASE_URL=database_url_for_subprocess()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())

    assert report["machine"]["cores"] >= 1 and "sync workers" in report["settings"]["gunicorn"]
    ingestion = report["ingestion"]
    for phase in ("bare_before", "wecom", "feishu", "bare_after", "wecom_fixed_rate"):
        # Every request was answered 200: a signing or routing mistake would show as 401/404.
        assert ingestion[phase]["ok"] > 0 and set(ingestion[phase]["statuses"]) == {"200"}, (phase, ingestion[phase])
        assert ingestion[phase]["ack_ms"]["p99"] is not None
        assert ingestion[phase]["machine_cpu_ms_per_request"] > 0  # Linux: read from /proc/stat
    assert set(ingestion["ratios"]) == {"wecom", "feishu"} and all(r > 0 for r in ingestion["ratios"].values())

    [rate] = [value for key, value in report["end_to_end"].items() if key.startswith("rate_")]
    assert rate["accepted"] == rate["sent"] > 0
    assert rate["delivered"] == rate["accepted"] == rate["reply_requests"]  # all, and each once
    assert rate["end_to_end_ms"]["p99"] is not None
    assert 0 < rate["machine_busy_percent"] <= 100

    slow = report["end_to_end_slow_model"]
    [rate] = [value for key, value in slow.items() if key.startswith("rate_")]
    assert rate["delivered"] == rate["accepted"] == rate["reply_requests"] > 0
    assert rate["most_model_calls_at_once"] >= 1
    # Every reply waited for the slow model: it was the one this part asked.
    assert rate["end_to_end_ms"]["p50"] >= slow["model_delay_s"] * 1000 > 0

    assert [c["turns"] for c in report["context"].values()] == [1, 10, 50]
    assert all(c["round_trips_per_turn"] == 2 for c in report["context"].values())
    for section in ("Ingestion", "End to end", "model answering after", "Context"):
        assert section in result.stdout, section
