"""Export the audit log with a SHA-256 chain (see audit/export.py and docs/audit-export.md)."""

from __future__ import annotations

import getpass
import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.export import ExportFilterError, ExportFilters, ExportFormat, ExportKind, start_export


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown"


class Command(BaseCommand):
    help = "Export configuration changes (or sign-in events) as chained CSV or JSON Lines."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=ExportFormat.values, default=ExportFormat.CSV)
        parser.add_argument(
            "--kind",
            choices=ExportKind.values,
            default=ExportKind.CHANGES,
            help="changes: configuration changes; auth: sign-ins, API refusals, exports",
        )
        parser.add_argument("--since", help="inclusive: 2026-01-01 or 2026-01-01T08:00:00Z")
        parser.add_argument("--until", help="exclusive; a date alone means through the end of that day")
        parser.add_argument("--model", default="", help="kind changes only: app_label.model, e.g. bots.bot")
        parser.add_argument("--actor", default="", help="only what this username did")
        parser.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")

    def handle(
        self,
        *args,
        format: str,
        kind: str,
        since: str | None,
        until: str | None,
        model: str,
        actor: str,
        output: str | None,
        **options,
    ) -> None:
        try:
            filters = ExportFilters.parse(kind=kind, since=since, until=until, model=model, actor=actor)
        except ExportFilterError as exc:
            raise CommandError(f"--{exc.field}: {exc.message}.") from None
        try:
            # newline="": the lines carry their own "\n"; nothing may translate them.
            target = open(output, "w", encoding="utf-8", newline="") if output else None
        except OSError as exc:
            raise CommandError(f"{output}: cannot be written: {exc.strerror}.") from None
        export = start_export(format, filters, username=f"manage.py export_audit ({_operator()})")
        try:
            for line in export.lines():
                if target is None:
                    self.stdout.write(line, ending="")
                else:
                    target.write(line)
        finally:
            if target is not None:
                target.close()
        # On standard error, so a pipe of the export itself stays clean.
        sys.stderr.write(f"exported {export.rows} rows (export {export.id}, final hash {export.final_hash})\n")
