"""deploy/prometheus/alerts.yml is valid and each alert fires on the data it is meant for
and not on healthy data (promtool test rules); the example prometheus.yml is valid; the
Grafana dashboard is a well-formed dashboard whose every query names metrics that
Switchboard's /metrics (or node_exporter, for CPU) exports."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from config.heartbeat import stamp_beat
from tests.ops.conftest import tool, write_certificate
from tests.processes import REPO_ROOT

ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "switchboard.json"
DAY = 86400

# alert → (input series, minutes to evaluate at, labels the alert carries) for a case that
# must fire, and input series of a healthy case that must not.
SB = 'instance="sb:18789",job="switchboard"'
CASES = {
    "SwitchboardHighCpu": (
        [('node_cpu_seconds_total{mode="idle",cpu="0",instance="host:9100"}', "0+6x40")],  # 10 % idle
        20,
        {"instance": "host:9100"},
        [('node_cpu_seconds_total{mode="idle",cpu="0",instance="host:9100"}', "0+30x40")],  # 50 % idle
    ),
    "SwitchboardSlowResponses": (
        [
            (
                f'django_http_requests_latency_seconds_by_view_method_bucket{{{SB},view="callback",method="POST",le="0.5"}}',
                "0+0x40",
            ),
            (
                f'django_http_requests_latency_seconds_by_view_method_bucket{{{SB},view="callback",method="POST",le="1.0"}}',
                "0+60x40",
            ),
            (
                f'django_http_requests_latency_seconds_by_view_method_bucket{{{SB},view="callback",method="POST",le="+Inf"}}',
                "0+60x40",
            ),
        ],
        20,
        {},
        # Fast callbacks; slow scrapes of /metrics itself do not count.
        [
            (
                f'django_http_requests_latency_seconds_by_view_method_bucket{{{SB},view="{view}",method="{method}",le="{le}"}}',
                values,
            )
            for view, method, fast in (("metrics", "GET", "0"), ("callback", "POST", "60"))
            for le, values in (("0.5", f"0+{fast}x40"), ("1.0", "0+60x40"), ("+Inf", "0+60x40"))
        ],
    ),
    "SwitchboardLowSuccessRate": (
        [
            (f'switchboard_messages_total{{{SB},platform="wecom",bot="b",status="replied"}}', "0+90x60"),
            (f'switchboard_messages_total{{{SB},platform="wecom",bot="b",status="failed"}}', "0+10x60"),
        ],
        40,
        {},
        [
            (f'switchboard_messages_total{{{SB},platform="wecom",bot="b",status="replied"}}', "0+99x60"),
            (f'switchboard_messages_total{{{SB},platform="wecom",bot="b",status="failed"}}', "0+1x60"),
        ],
    ),
    "SwitchboardWorkerDown": (
        [(f"switchboard_celery_workers{{{SB}}}", "1 1 0x20")],
        10,
        {"instance": "sb:18789", "job": "switchboard"},
        [(f"switchboard_celery_workers{{{SB}}}", "1x20")],
    ),
    "SwitchboardBeatDown": (
        [(f"switchboard_beat_last_seen_timestamp_seconds{{{SB}}}", "0x20")],
        15,
        {"instance": "sb:18789", "job": "switchboard"},
        [(f"switchboard_beat_last_seen_timestamp_seconds{{{SB}}}", "0+60x20")],
    ),
    "SwitchboardDown": (
        [(f"up{{{SB}}}", "0x10")],
        5,
        {"instance": "sb:18789", "job": "switchboard"},
        [(f"up{{{SB}}}", "1x10")],
    ),
    "SwitchboardQueueBacklog": (
        [(f'switchboard_queue_depth{{{SB},queue="switchboard"}}', "150x10")],
        8,
        {"instance": "sb:18789", "job": "switchboard", "queue": "switchboard"},
        [(f'switchboard_queue_depth{{{SB},queue="switchboard"}}', "50x10")],
    ),
    "SwitchboardOutboxStuck": (
        [(f'switchboard_outbox_stuck{{{SB},status="processing"}}', "2x20")],
        15,
        {},
        [(f'switchboard_outbox_stuck{{{SB},status="processing"}}', "0x20")],
    ),
    "SwitchboardScrapeSourceDown": (
        [(f'switchboard_scrape_source_up{{{SB},source="redis"}}', "0x10")],
        8,
        {"instance": "sb:18789", "job": "switchboard", "source": "redis"},
        [(f'switchboard_scrape_source_up{{{SB},source="redis"}}', "1x10")],
    ),
    "SwitchboardCertificateExpiresSoon": (
        [(f"switchboard_tls_certificate_expiry_timestamp_seconds{{{SB}}}", f"{10 * DAY}x200")],
        120,
        {"instance": "sb:18789", "job": "switchboard"},
        [(f"switchboard_tls_certificate_expiry_timestamp_seconds{{{SB}}}", f"{30 * DAY}x200")],
    ),
    "SwitchboardCertificateExpired": (
        [(f"switchboard_tls_certificate_expiry_timestamp_seconds{{{SB}}}", f"{DAY}x200")],
        120,
        {"instance": "sb:18789", "job": "switchboard"},
        [(f"switchboard_tls_certificate_expiry_timestamp_seconds{{{SB}}}", f"{10 * DAY}x200")],
    ),
}


def _rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def _expected_alert(rule: dict, labels: dict[str, str]) -> dict:
    """The labels and annotations promtool must see, templates filled with the labels."""

    def fill(text: str) -> str:
        return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), text)

    return {
        "exp_labels": {**labels, **rule.get("labels", {})},
        "exp_annotations": {key: fill(value) for key, value in rule.get("annotations", {}).items()},
    }


def test_promtool_accepts_the_rules_and_the_example_configuration():
    promtool = tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(CASES)} rules found" in checked.stdout
    config = subprocess.run(
        [promtool, "check", "config", str(ALERTS.parent / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_seed_alerts_and_ours_are_all_there():
    assert set(_rules()) == set(CASES)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_each_alert_fires_on_its_case_and_not_on_healthy_data(alert, tmp_path):
    promtool = tool("promtool")
    firing, minutes, labels, healthy = CASES[alert]
    rule = _rules()[alert]
    tests = []
    for series, expected in ((firing, [_expected_alert(rule, labels)]), (healthy, [])):
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in series],
                "alert_rule_test": [{"eval_time": f"{minutes}m", "alertname": alert, "exp_alerts": expected}],
            }
        )
    test_file = tmp_path / "alerts.test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the dashboard ----------------------------------------------------------------------

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
NODE_EXPORTER = {"node_cpu_seconds_total"}  # the CPU alert's source, documented in operations.md


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group())
    return names


def test_metric_names_are_read_from_promql():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, platform) (rate(a_bucket{view!="x"}[5m]))) / on (x) b - time()'
    ) == {"a_bucket", "b"}


@pytest.fixture
def exported(client, db, settings, tmp_path) -> set[str]:
    """Every series name our /metrics exports (histograms with _bucket, _sum, _count), with
    a certificate configured and beat seen, as on a deployed server."""
    write_certificate(tmp_path / "fullchain.pem", days=90)
    settings.TLS_CERTIFICATE_PATH = str(tmp_path / "fullchain.pem")
    stamp_beat()
    body = client.get("/metrics").content.decode()
    names = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", body, re.MULTILINE):
        names.add(family)
        if kind == "histogram":
            names.update({f"{family}_bucket", f"{family}_sum", f"{family}_count"})
    return names


def test_the_dashboard_is_a_grafana_dashboard_over_our_metrics(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Switchboard" and dashboard["uid"] == "switchboard"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"

    occupied: dict[tuple[int, int], str] = {}
    queried = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"stat", "timeseries"}
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            missing = names - exported - NODE_EXPORTER
            assert not missing, f"{panel['title']} reads {missing}, which /metrics does not export"
            queried |= names

    # The metrics are all on the dashboard.
    for name in (
        "switchboard_messages_total",
        "switchboard_callback_ack_seconds_bucket",
        "switchboard_end_to_end_seconds_bucket",
        "switchboard_model_seconds_bucket",
        "switchboard_send_retries_total",
        "switchboard_rate_limit_wait_seconds_bucket",
        "switchboard_queue_depth",
        "switchboard_outbox_stuck",
        "switchboard_celery_workers",
    ):
        assert name in queried, name


def test_the_alerts_read_only_metrics_that_exist(exported):
    for name, rule in _rules().items():
        missing = metric_names(rule["expr"]) - exported - NODE_EXPORTER - {"up"}
        assert not missing, f"{name} reads {missing}, which /metrics does not export"
