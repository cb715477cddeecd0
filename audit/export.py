"""Tamper-evident exports of the audit log, as CSV or JSON Lines.

An export is a header line, one line per row, and an end line:

- the header names the export (id, kind, format, filters, generated_at, columns);
- every row carries `prev_hash` and `hash`, where
  `hash = sha256(prev_hash + canonical JSON of the row without prev_hash and hash)`
  and the first row's prev_hash is sha256 of the header's canonical JSON;
- the end line holds the row count, chained the same way, and its hash is the
  export's final hash.

So an edited row breaks its own hash; a removed, inserted or moved row breaks the next
row's prev_hash; an edited header breaks the first row; a cut tail loses the end line
or no longer matches its count. Someone who rewrites the whole chain after a change
is caught by the final hash, which is recorded with the AUDIT_EXPORTED event when
the export is made (recorded_final_hash; verify_audit_export checks it).

Canonical JSON: keys sorted, no spaces, UTF-8 (json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)). In CSV every value is a string (a JSON
value such as `changes` is JSON text) and the hash covers the strings as written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, TextIO

from auditlog.models import LogEntry
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit.events import record_auth_event
from audit.models import AuthEvent, AuthEventKind

VERSION = 1
HEADER_KEY = "switchboard_audit_export"
END_KEY = "switchboard_audit_export_end"
CHAIN_COLUMNS = ["prev_hash", "hash"]
CHAIN_RULE = (
    "hash = sha256(prev_hash + canonical JSON of the row without prev_hash and hash); the first prev_hash is "
    "sha256 of the canonical JSON of this header; the last line holds the row count and the final hash"
)
ACTIONS = dict(LogEntry.Action.choices)
# Spreadsheets run a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportKind(models.TextChoices):
    CHANGES = "changes", "configuration changes (django-auditlog)"
    AUTH = "auth", "sign-in and API events"


class ExportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    JSONL = "jsonl", "JSON Lines"


COLUMNS = {
    ExportKind.CHANGES: [
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
    ],
    ExportKind.AUTH: ["seq", "at", "kind", "username", "remote_addr", "user_agent", "detail"],
}
CONTENT_TYPES = {ExportFormat.CSV: "text/csv; charset=utf-8", ExportFormat.JSONL: "application/jsonl; charset=utf-8"}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, record: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(record)).encode("utf-8")).hexdigest()


def header_hash(header: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(header).encode("utf-8")).hexdigest()


# -- filters -------------------------------------------------------------------------


class ExportFilterError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _moment(value: str | date | datetime | None, field_name: str, end_of_day: bool) -> datetime | None:
    """A bound as an aware datetime. A date alone means the start of that day for
    `since` and the end of it for `until`, so since=until=2026-03-01 is that whole day."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            # The date first: parse_datetime would read a bare date as its midnight.
            parsed = parse_date(text) or parse_datetime(text)
        except ValueError:
            parsed = None
        if parsed is None:
            raise ExportFilterError(
                field_name, f"{value!r} is not a date (2026-03-01) or a date and time (2026-03-01T12:00:00Z)"
            )
        value = parsed
    if not isinstance(value, datetime):
        value = datetime.combine(value + timedelta(days=1) if end_of_day else value, time.min)
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value


def _model_label(value: str) -> str:
    """ "bots.bot", "bots.Bot" or "bot" → "bots.bot" (a model auditlog may have logged)."""
    text = value.strip().lower()
    if "." in text:
        app_label, model = text.split(".", 1)
        found = ContentType.objects.filter(app_label=app_label, model=model)
    else:
        found = ContentType.objects.filter(model=text)
    labels = sorted(f"{ct.app_label}.{ct.model}" for ct in found)
    if len(labels) != 1:
        problem = "is ambiguous" if labels else "is not a known model"
        raise ExportFilterError("model", f"{value!r} {problem}; name it as app_label.model, e.g. bots.bot")
    return labels[0]


@dataclass(frozen=True)
class ExportFilters:
    """What to export. `since` is inclusive, `until` exclusive; both optional."""

    kind: str = ExportKind.CHANGES
    since: datetime | None = None
    until: datetime | None = None
    model: str = ""
    actor: str = ""

    @classmethod
    def parse(
        cls,
        kind: str = ExportKind.CHANGES,
        since: str | date | datetime | None = None,
        until: str | date | datetime | None = None,
        model: str = "",
        actor: str = "",
    ) -> ExportFilters:
        """From form or query values; raises ExportFilterError naming the field."""
        if kind not in ExportKind.values:
            raise ExportFilterError("kind", f"{kind!r} is not one of {', '.join(ExportKind.values)}")
        start = _moment(since, "since", end_of_day=False)
        end = _moment(until, "until", end_of_day=True)
        if start and end and start >= end:
            raise ExportFilterError("until", "must be after since")
        model = (model or "").strip()
        if model and kind != ExportKind.CHANGES:
            raise ExportFilterError("model", "applies to kind=changes only")
        return cls(kind, start, end, _model_label(model) if model else "", (actor or "").strip())

    def as_dict(self) -> dict[str, str | None]:
        return {
            "kind": str(self.kind),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "model": self.model or None,
            "actor": self.actor or None,
        }

    def describe(self) -> str:
        # No "|" from a filter value: the event's "| rows=… sha256=…" suffix must be ours.
        return " ".join(f"{name}={value.replace('|', '/')}" for name, value in self.as_dict().items() if value)


# -- rows ----------------------------------------------------------------------------


def _change_rows(filters: ExportFilters, generated_at: datetime) -> Iterator[dict[str, Any]]:
    entries = LogEntry.objects.filter(timestamp__lte=generated_at).select_related("actor", "content_type")
    if filters.since:
        entries = entries.filter(timestamp__gte=filters.since)
    if filters.until:
        entries = entries.filter(timestamp__lt=filters.until)
    if filters.model:
        app_label, model = filters.model.split(".", 1)
        entries = entries.filter(content_type__app_label=app_label, content_type__model=model)
    if filters.actor:
        entries = entries.filter(actor__username=filters.actor)
    for entry in entries.order_by("timestamp", "id").iterator(chunk_size=1000):
        actor = entry.actor.get_username() if entry.actor else (entry.actor_email or "")
        yield {
            "timestamp": entry.timestamp.isoformat(),
            "actor": actor,
            "remote_addr": entry.remote_addr or "",
            "action": str(ACTIONS.get(entry.action, entry.action)),
            "model": f"{entry.content_type.app_label}.{entry.content_type.model}",
            "object_id": entry.object_pk,
            "object_repr": entry.object_repr,
            # Secrets were masked when the entry was written (mask_fields), so the diff
            # is exported as stored.
            "changes": entry.changes_dict,
            "cid": entry.cid or "",
        }


def _auth_rows(filters: ExportFilters, generated_at: datetime) -> Iterator[dict[str, Any]]:
    events = AuthEvent.objects.filter(at__lte=generated_at)
    if filters.since:
        events = events.filter(at__gte=filters.since)
    if filters.until:
        events = events.filter(at__lt=filters.until)
    if filters.actor:
        events = events.filter(username=filters.actor)
    for event in events.order_by("at", "id").iterator(chunk_size=1000):
        yield {
            "at": event.at.isoformat(),
            "kind": event.kind,
            "username": event.username,
            "remote_addr": event.remote_addr or "",
            "user_agent": event.user_agent,
            "detail": event.detail,
        }


ROWS = {ExportKind.CHANGES: _change_rows, ExportKind.AUTH: _auth_rows}


# -- writing -------------------------------------------------------------------------


def _csv_cell(value: Any) -> str:
    text = value if isinstance(value, str) else canonical(value) if isinstance(value, dict | list) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_line(values: Iterable[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


@dataclass
class AuditExport:
    """One export in the making. `lines()` yields it once; afterwards `rows` and
    `final_hash` describe it, and the AUDIT_EXPORTED event records them."""

    fmt: str
    filters: ExportFilters
    event: AuthEvent | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    generated_at: datetime = field(default_factory=timezone.now)
    rows: int = 0
    final_hash: str = ""

    @property
    def columns(self) -> list[str]:
        return COLUMNS[self.filters.kind]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]

    @property
    def filename(self) -> str:
        return f"audit-{self.filters.kind}-{self.generated_at:%Y%m%dT%H%M%SZ}.{self.fmt}"

    def header(self) -> dict[str, Any]:
        return {
            HEADER_KEY: VERSION,
            "id": self.id,
            "kind": str(self.filters.kind),
            "format": str(self.fmt),
            "filters": self.filters.as_dict(),
            "generated_at": self.generated_at.isoformat(),
            "columns": [*self.columns, *CHAIN_COLUMNS],
            "chain": CHAIN_RULE,
        }

    def _encode(self, record: dict[str, Any]) -> str:
        if self.fmt == ExportFormat.CSV:
            return _csv_line(record[name] for name in [*self.columns, *CHAIN_COLUMNS])
        return canonical(record) + "\n"

    def lines(self) -> Iterator[str]:
        header = self.header()
        if self.fmt == ExportFormat.CSV:
            # The header is one CSV cell, then the column names, so spreadsheets and
            # csv readers both see ordinary rows.
            yield _csv_line([canonical(header)])
            yield _csv_line(header["columns"])
        else:
            yield canonical(header) + "\n"
        prev = header_hash(header)
        count = 0
        for values in ROWS[self.filters.kind](self.filters, self.generated_at):
            count += 1
            record: dict[str, Any] = {"seq": count, **values}
            if self.fmt == ExportFormat.CSV:
                record = {name: _csv_cell(value) for name, value in record.items()}
            record["prev_hash"] = prev
            record["hash"] = prev = chain_hash(prev, {k: v for k, v in record.items() if k not in CHAIN_COLUMNS})
            yield self._encode(record)
        end = {END_KEY: VERSION, "rows": count}
        final = chain_hash(prev, end)
        end_line = {**end, "prev_hash": prev, "hash": final}
        yield _csv_line([canonical(end_line)]) if self.fmt == ExportFormat.CSV else canonical(end_line) + "\n"
        self.rows, self.final_hash = count, final
        if self.event is not None:
            self.event.detail = f"{self.event.detail} | rows={count} sha256={final}"
            AuthEvent.objects.filter(pk=self.event.pk).update(detail=self.event.detail)


def start_export(
    fmt: str,
    filters: ExportFilters,
    *,
    request: HttpRequest | None = None,
    user: AbstractBaseUser | None = None,
    username: str = "",
) -> AuditExport:
    """Record the export (AUDIT_EXPORTED, with its id and filters) and return it ready
    to stream. Recorded before the first byte, so an export cut off midway is on file too;
    the row count and final hash are added to the event when the last line is out."""
    if fmt not in ExportFormat.values:
        raise ExportFilterError("format", f"{fmt!r} is not one of {', '.join(ExportFormat.values)}")
    export = AuditExport(fmt=fmt, filters=filters)
    # The id and format lead and the hash is appended, so they always fit in the 300
    # characters; only a long filter description is shortened.
    detail = f"export {export.id} {fmt} {filters.describe()}"[:200]
    export.event = record_auth_event(AuthEventKind.AUDIT_EXPORTED, request, user=user, username=username, detail=detail)
    return export


def write_export(
    stream: TextIO,
    fmt: str,
    *,
    request: HttpRequest | None = None,
    user: AbstractBaseUser | None = None,
    username: str = "",
    **filters: Any,
) -> AuditExport:
    """Write a whole export to `stream` (a file, or an HttpResponse). `filters` are
    ExportFilters.parse's: kind, since, until, model, actor (strings, dates or
    datetimes). Raises ExportFilterError before anything is recorded or written."""
    export = start_export(fmt, ExportFilters.parse(**filters), request=request, user=user, username=username)
    for line in export.lines():
        stream.write(line)
    return export


def export_response(
    fmt: str, filters: ExportFilters, *, request: HttpRequest, user: AbstractBaseUser | None = None, username: str = ""
) -> StreamingHttpResponse:
    """A streaming download of an export, for the API and the console."""
    export = start_export(fmt, filters, request=request, user=user, username=username)
    response = StreamingHttpResponse(export.lines(), content_type=export.content_type)
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    response["X-Audit-Export-Id"] = export.id
    return response


# -- verifying -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    ok: bool
    rows: int
    message: str
    line: int | None = None  # the first line found wrong
    export_id: str = ""
    final_hash: str = ""


class _Broken(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _records(stream: Iterable[str], fmt: str) -> Iterator[tuple[int, Any]]:
    """(first line number, parsed record) for each record: a dict for JSON Lines, a
    list of cells for CSV (a quoted cell may span lines)."""
    if fmt == ExportFormat.JSONL:
        for number, text in enumerate(stream, start=1):
            if not text.strip():
                raise _Broken(number, "empty line")
            try:
                yield number, json.loads(text)
            except ValueError as exc:
                raise _Broken(number, f"not JSON ({exc})") from None
        return
    reader = csv.reader(stream)
    start = 1
    try:
        for cells in reader:
            yield start, cells
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _Broken(start, f"not CSV ({exc})") from None


def _json_cell(cells: list[str], number: int, what: str) -> dict[str, Any]:
    try:
        value = json.loads(cells[0]) if len(cells) == 1 else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise _Broken(number, f"expected the {what} line (one cell of JSON)")
    return value


def verify_export(stream: TextIO) -> Verification:
    """Check an export's chain; say where it first breaks."""
    first = stream.readline()
    if not first.startswith(("{", '"')):
        return Verification(False, 0, "not a Switchboard audit export: the first line is not its header", line=1)
    fmt = ExportFormat.JSONL if first.startswith("{") else ExportFormat.CSV
    text = itertools.chain([first], stream)
    rows = 0
    export_id = ""
    try:
        records = _records(text, fmt)
        number, record = next(records)
        header = record if fmt == ExportFormat.JSONL else _json_cell(record, number, "header")
        if not isinstance(header, dict) or header.get(HEADER_KEY) != VERSION:
            raise _Broken(number, f"not a version {VERSION} Switchboard audit export header")
        export_id = str(header.get("id", ""))
        columns = header.get("columns")
        if fmt == ExportFormat.CSV:
            number, record = next(records, (number + 1, None))
            if record != columns:
                raise _Broken(number, "the column names differ from the ones the header lists")
        prev = header_hash(header)
        last_number = number
        for number, record in records:
            last_number = number
            if fmt == ExportFormat.CSV:
                if len(record) == 1 and record[0].startswith("{"):
                    record = _json_cell(record, number, "end")
                elif len(record) != len(columns):
                    raise _Broken(number, f"{len(record)} values where the header lists {len(columns)} columns")
                else:
                    record = dict(zip(columns, record, strict=True))
            if not isinstance(record, dict):
                raise _Broken(number, "not a JSON object")
            if END_KEY in record:
                _check_end(record, number, prev, rows)
                rest = next(records, None)
                if rest is not None:
                    raise _Broken(rest[0], "more lines after the end line")
                return Verification(
                    True, rows, f"OK: {rows} rows, chain intact", export_id=export_id, final_hash=record["hash"]
                )
            if record.get("prev_hash") != prev:
                raise _Broken(
                    number,
                    "prev_hash is not the hash of the line before: a row was removed, inserted "
                    "or moved here (or the header was changed)",
                )
            body = {k: v for k, v in record.items() if k not in CHAIN_COLUMNS}
            if record.get("hash") != chain_hash(prev, body):
                raise _Broken(number, "the row's hash does not match its contents: the row was changed")
            prev = record["hash"]
            rows += 1
        raise _Broken(last_number + 1, f"no end line: the export was cut short after {rows} rows")
    except StopIteration:
        return Verification(False, 0, "the file is empty", line=1)
    except _Broken as broken:
        return Verification(False, rows, broken.message, line=broken.line, export_id=export_id)


def _check_end(record: dict[str, Any], number: int, prev: str, rows: int) -> None:
    if record.get("prev_hash") != prev:
        raise _Broken(
            number, "the end line does not follow the last row: rows were removed, inserted or moved before it"
        )
    body = {k: v for k, v in record.items() if k not in CHAIN_COLUMNS}
    if record.get("hash") != chain_hash(prev, body):
        raise _Broken(number, "the end line was changed")
    if record.get("rows") != rows:
        raise _Broken(number, f"the end line counts {record.get('rows')} rows, the file has {rows}")


_RECORDED_HASH = re.compile(r"\| rows=\d+ sha256=([0-9a-f]{64})$")


def recorded_final_hash(export_id: str) -> tuple[AuthEvent | None, str]:
    """The AUDIT_EXPORTED event of an export and the final hash it recorded ("" if the
    export never finished)."""
    event = (
        AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED, detail__startswith=f"export {export_id} ")
        .order_by("at")
        .first()
        if re.fullmatch(r"[0-9a-f]{32}", export_id)
        else None
    )
    if event is None:
        return None, ""
    found = _RECORDED_HASH.search(event.detail)
    return event, found.group(1) if found else ""
