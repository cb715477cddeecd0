"""Prove an audit export was not edited, reordered or cut (see audit/export.py)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from audit.export import recorded_final_hash, verify_export


class Command(BaseCommand):
    help = "Check the SHA-256 chain of an audit export; exit 1 naming the first bad line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", metavar="FILE")

    def handle(self, *args, file: str, **options) -> None:
        try:
            # newline="": a CSV cell may hold a line break, which the csv reader must see as is.
            with open(file, encoding="utf-8", newline="") as stream:
                result = verify_export(stream)
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{file}: cannot be read: {exc}.") from None
        if not result.ok:
            raise CommandError(f"{file}: line {result.line}: {result.message}")
        self.stdout.write(result.message)
        # The chain proves the file is whole and in order; only the hash recorded when
        # the export was made proves nobody rebuilt the whole chain after a change.
        try:
            event, recorded = recorded_final_hash(result.export_id)
        except DatabaseError as exc:
            self.stdout.write(f"could not look the export up in the audit log ({exc}); only the chain was checked")
            return
        if event is None:
            self.stdout.write(
                f"export {result.export_id} is not in this installation's audit log; only the chain was checked"
            )
        elif not recorded:
            self.stdout.write(
                f"export {result.export_id} was started at {event.at:%Y-%m-%d %H:%M:%S} UTC but "
                "never finished; only the chain was checked"
            )
        elif recorded != result.final_hash:
            raise CommandError(
                f"{file}: the chain is intact, but its final hash differs from the one recorded when export "
                f"{result.export_id} was made at {event.at:%Y-%m-%d %H:%M:%S} UTC: the file was rebuilt after a change"
            )
        else:
            self.stdout.write(
                f"final hash matches export {result.export_id}, made at "
                f"{event.at:%Y-%m-%d %H:%M:%S} UTC by {event.username or 'an unknown user'}"
            )
