"""Audit exports: what they hold, that the chain verifies, that verify_audit_export
catches every way of altering a file, and that exporting is audited."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from auditlog.context import set_actor
from auditlog.models import LogEntry
from django.core.management import CommandError, call_command

from audit.events import record_auth_event
from audit.export import chain_hash, header_hash, verify_export, write_export
from audit.models import AuthEvent, AuthEventKind
from bots.models import Bot
from routing.models import ModelBackend
from tests.api.conftest import EXPORT_URL

pytestmark = pytest.mark.django_db

ADMIN_IP = "10.9.8.7"
BOT_SECRET = "s3cr3t-app-secret-abcdef"
NEW_SECRET = "another-s3cr3t-999999"
BACKEND_KEY = "sk-live-0123456789abcdef"
SECRETS = (BOT_SECRET, NEW_SECRET, BACKEND_KEY)


@pytest.fixture
def trail(staff_user):
    """Config changes by alice from ADMIN_IP: a bot created then edited, a backend created."""
    with set_actor(staff_user, remote_addr=ADMIN_IP):
        bot = Bot.objects.create(name="audited", platform="wecom", extra={"agent_id": 1}, app_secret=BOT_SECRET)
        bot.system_prompt = "be brief"
        bot.app_secret = NEW_SECRET
        bot.save()
        ModelBackend.objects.create(
            name="gpt", kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key=BACKEND_KEY
        )
    return bot


@pytest.fixture
def auditor_key(issue_key):
    return issue_key(name="auditor", scopes=["audit:read"])


def download(api, key: str, **query) -> tuple[object, str]:
    response = api.get(EXPORT_URL, query, HTTP_AUTHORIZATION=f"Api-Key {key}")
    body = b"".join(response.streaming_content).decode() if response.streaming else response.content.decode()
    return response, body


def jsonl_rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()[1:-1]]


def test_csv_export_holds_actor_address_and_masked_diffs_and_verifies(api, trail, auditor_key):
    _, key = auditor_key
    response, body = download(api, key, format="csv")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-changes-')
    lines = list(csv.reader(io.StringIO(body)))
    header = json.loads(lines[0][0])
    assert header["kind"] == "changes" and header["format"] == "csv"
    columns = lines[1]
    assert (
        columns
        == header["columns"]
        == [
            "seq",
            "timestamp",
            "actor",
            "remote_addr",
            "action",
            "model",
            "object_id",
            "object_repr",
            "changes",
            "cid",
            "prev_hash",
            "hash",
        ]
    )
    rows = [dict(zip(columns, line, strict=True)) for line in lines[2:-1]]
    bot_rows = [r for r in rows if r["model"] == "bots.bot"]
    assert [(r["action"], r["actor"], r["remote_addr"], r["object_id"]) for r in bot_rows] == [
        ("create", "alice", ADMIN_IP, str(trail.pk)),
        ("update", "alice", ADMIN_IP, str(trail.pk)),
    ]
    assert json.loads(bot_rows[1]["changes"])["app_secret"] == ["********", "********"]
    assert json.loads(bot_rows[1]["changes"])["system_prompt"] == ["", "be brief"]
    assert [r["seq"] for r in rows] == [str(n) for n in range(1, len(rows) + 1)]
    for secret in SECRETS:
        assert secret not in body

    result = verify_export(io.StringIO(body))
    assert (result.ok, result.rows, result.message) == (True, len(rows), f"OK: {len(rows)} rows, chain intact")


def test_jsonl_export_keeps_json_values_and_verifies(api, trail, auditor_key):
    _, key = auditor_key
    response, body = download(api, key, format="jsonl", model="bots.bot")

    assert response["Content-Type"] == "application/jsonl; charset=utf-8"
    rows = jsonl_rows(body)
    assert [(r["action"], r["model"], r["actor"], r["remote_addr"]) for r in rows] == [
        ("create", "bots.bot", "alice", ADMIN_IP),
        ("update", "bots.bot", "alice", ADMIN_IP),
    ]
    assert rows[0]["changes"]["app_secret"] == ["None", "********"]
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert json.loads(body.splitlines()[-1])["rows"] == 2
    assert verify_export(io.StringIO(body)).ok


def test_filters_by_date_model_and_actor(api, trail, auditor_key, django_user_model):
    _, key = auditor_key
    bob = django_user_model.objects.create_user(username="bob", password="x" * 12)
    with set_actor(bob):
        Bot.objects.create(name="bobs", platform="wecom", extra={"agent_id": 1})
    old = LogEntry.objects.get(object_repr="gpt")
    LogEntry.objects.filter(pk=old.pk).update(timestamp=datetime(2025, 6, 1, 12, tzinfo=UTC))

    def reprs(**query) -> list[str]:
        response, body = download(api, key, format="jsonl", **query)
        assert response.status_code == 200, body
        return [r["object_repr"] for r in jsonl_rows(body)]

    assert reprs(until="2025-06-01") == ["gpt"]  # a date alone: through the end of that day
    assert reprs(since="2025-06-02", until="2025-12-31") == []
    assert "gpt" not in reprs(since="2025-06-02")
    assert reprs(actor="bob") == ["bobs"]
    assert reprs(actor="alice", model="routing.modelbackend") == ["gpt"]


def test_auth_events_are_exported_too(api, auditor_key, rf):
    _, key = auditor_key
    request = rf.get("/", REMOTE_ADDR="192.0.2.9", HTTP_USER_AGENT="curl/8")
    record_auth_event(AuthEventKind.LOGIN_FAILED, request, username="mallory")

    response, body = download(api, key, format="csv", kind="auth", actor="mallory")

    lines = list(csv.reader(io.StringIO(body)))
    assert lines[1] == ["seq", "at", "kind", "username", "remote_addr", "user_agent", "detail", "prev_hash", "hash"]
    assert [line[2:6] for line in lines[2:-1]] == [["login_failed", "mallory", "192.0.2.9", "curl/8"]]
    assert verify_export(io.StringIO(body)).ok


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "last tuesday"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "until"),
        ({"model": "nosuch.model"}, "model"),
        ({"kind": "auth", "model": "bots.bot"}, "model"),
        ({"format": "xlsx"}, "format"),
        ({"kind": "logins"}, "kind"),
    ],
)
def test_bad_filters_are_refused_and_nothing_is_exported(api, auditor_key, query, field):
    _, key = auditor_key
    response = api.get(EXPORT_URL, query, HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and list(error["fields"]) == [field]
    assert not AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED).exists()


def test_exporting_is_audited_with_the_filters_and_the_final_hash(api, trail, auditor_key):
    row, key = auditor_key
    response, body = download(api, key, format="jsonl", since="2026-01-01", actor="alice")

    [event] = AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED)
    result = verify_export(io.StringIO(body))
    assert event.username == f"api key {row.prefix} (auditor)"
    assert event.remote_addr == "127.0.0.1"
    assert event.detail.startswith(f"export {result.export_id} jsonl kind=changes since=2026-01-01T00:00:00+00:00 ")
    assert "actor=alice" in event.detail
    assert event.detail.endswith(f" | rows={result.rows} sha256={result.final_hash}")
    assert response["X-Audit-Export-Id"] == result.export_id


def test_a_formula_in_a_cell_is_defused_for_spreadsheets(staff_user):
    with set_actor(staff_user):
        Bot.objects.create(name='=HYPERLINK("http://evil.example","x")', platform="wecom", extra={"agent_id": 1})
    stream = io.StringIO()
    write_export(stream, "csv", username="test", model="bots.bot")
    lines = list(csv.reader(io.StringIO(stream.getvalue())))
    assert lines[2][7] == """'=HYPERLINK("http://evil.example","x")"""
    assert verify_export(io.StringIO(stream.getvalue())).ok


# -- the command line ----------------------------------------------------------------------


def export_file(tmp_path, fmt: str) -> tuple[str, list[str]]:
    path = tmp_path / f"export.{fmt}"
    call_command("export_audit", "--format", fmt, "--output", str(path))
    return str(path), path.read_text().splitlines(keepends=True)


def verify(path: str) -> str:
    out = io.StringIO()
    call_command("verify_audit_export", path, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_audit_writes_a_file_that_verify_audit_export_accepts(tmp_path, trail, fmt):
    path, lines = export_file(tmp_path, fmt)
    rows = len(lines) - (3 if fmt == "csv" else 2)
    assert rows >= 3

    output = verify(path)

    assert output.startswith(f"OK: {rows} rows, chain intact\n")
    assert "final hash matches export" in output and "by manage.py export_audit (" in output
    event = AuthEvent.objects.get(kind=AuthEventKind.AUDIT_EXPORTED)
    assert event.username.startswith("manage.py export_audit (") and f"rows={rows} " in event.detail


def tampered(tmp_path, lines: list[str], fmt: str) -> str:
    path = tmp_path / f"tampered.{fmt}"
    path.write_text("".join(lines))
    return str(path)


FIRST_ROW = {"csv": 2, "jsonl": 1}  # the index of the first row's line


def more_rows(line: str) -> str:
    """The end line claiming one row more than it had (in CSV its JSON quotes are doubled)."""
    return re.sub(r'rows("+):(\d+)', lambda m: f"rows{m.group(1)}:{int(m.group(2)) + 1}", line)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("delete a row", "a row was removed, inserted or moved here"),
        ("edit a row", "the row was changed"),
        ("swap two rows", "a row was removed, inserted or moved here"),
        ("edit the header", "or the header was changed"),
        ("cut the tail", "no end line: the export was cut short"),
        ("cut the last row", "the end line does not follow the last row"),
        ("edit the row count", "the end line was changed"),
    ],
)
def test_verify_audit_export_names_the_first_bad_line(tmp_path, trail, fmt, change, words):
    _, lines = export_file(tmp_path, fmt)
    second = FIRST_ROW[fmt] + 1  # so that one row comes before it
    end = len(lines) - 1
    assert end - FIRST_ROW[fmt] >= 4  # four rows: alice, her bot twice, her backend
    if change == "delete a row":
        del lines[second]
        bad = second
    elif change == "edit a row":
        assert '"alice"' in lines[second].replace('""', '"') or ",alice," in lines[second]
        lines[second] = lines[second].replace("alice", "mallory")
        bad = second
    elif change == "swap two rows":
        lines[second], lines[second + 1] = lines[second + 1], lines[second]
        bad = second
    elif change == "edit the header":
        lines[0] = lines[0].replace("sha256 of the canonical JSON", "sha256 of any JSON")
        bad = FIRST_ROW[fmt]
    elif change == "cut the tail":
        del lines[end]
        bad = end  # where the end line should have been
    elif change == "cut the last row":
        del lines[end - 1]
        bad = end - 1
    else:
        lines[end] = more_rows(lines[end])
        assert "rows" in lines[end] and lines[end] != more_rows(lines[end - 1])
        bad = end

    with pytest.raises(CommandError) as raised:
        verify(tampered(tmp_path, lines, fmt))

    assert f": line {bad + 1}: " in str(raised.value)
    assert words in str(raised.value)


def test_an_end_line_rechained_after_a_cut_still_counts_the_rows(tmp_path, trail):
    """Cutting the last row and re-chaining the end line to the new last row leaves the
    count to tell."""
    _, lines = export_file(tmp_path, "jsonl")
    end = json.loads(lines.pop())
    del lines[-1]
    prev = json.loads(lines[-1])["hash"]
    body = {"switchboard_audit_export_end": 1, "rows": end["rows"]}
    lines.append(json.dumps({**body, "prev_hash": prev, "hash": chain_hash(prev, body)}) + "\n")

    with pytest.raises(CommandError) as raised:
        verify(tampered(tmp_path, lines, "jsonl"))

    assert f": line {len(lines)}: the end line counts {end['rows']} rows, the file has {end['rows'] - 1}" in str(
        raised.value
    )


def test_a_rebuilt_chain_is_caught_by_the_hash_recorded_at_export(tmp_path, trail):
    path, lines = export_file(tmp_path, "jsonl")
    records = [json.loads(line) for line in lines]
    header, rows = records[0], records[2:-1]  # the first row is dropped, the rest re-chained
    prev = header_hash(header)
    rebuilt = [json.dumps(header) + "\n"]
    for seq, row in enumerate(rows, start=1):
        body = {k: v for k, v in row.items() if k not in ("prev_hash", "hash")} | {"seq": seq}
        row = {**body, "prev_hash": prev, "hash": chain_hash(prev, body)}
        prev = row["hash"]
        rebuilt.append(json.dumps(row) + "\n")
    end = {"switchboard_audit_export_end": 1, "rows": len(rows)}
    rebuilt.append(json.dumps({**end, "prev_hash": prev, "hash": chain_hash(prev, end)}) + "\n")

    with pytest.raises(CommandError) as raised:
        verify(tampered(tmp_path, rebuilt, "jsonl"))

    assert "the chain is intact, but its final hash differs" in str(raised.value)
    assert verify_export(io.StringIO("".join(rebuilt))).ok  # the chain alone cannot tell


def test_an_export_from_elsewhere_verifies_on_its_chain_alone(tmp_path, trail):
    path, _ = export_file(tmp_path, "csv")
    AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED).delete()
    output = verify(path)
    assert output.startswith("OK: ") and "only the chain was checked" in output


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("name,value\na,1\n")
    with pytest.raises(CommandError, match="line 1: not a Switchboard audit export"):
        verify(str(path))


def test_the_independent_check_in_the_docs_works(tmp_path, trail, capsys):
    path, _ = export_file(tmp_path, "jsonl")
    page = (Path(__file__).resolve().parents[2] / "docs" / "audit-export.md").read_text()
    snippet = page.split("The chain can be checked without Switchboard")[1].split("```python\n")[1].split("```")[0]
    exec(snippet.replace('"q1.jsonl"', repr(path)), {})  # noqa: S102 - our own documentation
    with open(path, encoding="utf-8", newline="") as stream:
        final = verify_export(stream).final_hash
    assert capsys.readouterr().out.strip().endswith(f"final hash {final}")
