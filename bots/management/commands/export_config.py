"""Write the configuration as the JSON that import_config reads, without secrets."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from bots.config_io import ConfigError, export_document, plan_import


class Command(BaseCommand):
    help = "Export backends, bots, routing rules and admin access rules as JSON (secrets left out)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")

    def handle(self, *args, output: str | None, **options) -> None:
        document = export_document()
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        if output:
            try:
                Path(output).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise CommandError(f"{output}: cannot be written: {exc.strerror}.") from None
        else:
            self.stdout.write(text, ending="")
        # The console allows a few states the file cannot express (two rules with the
        # same bot, priority, match and pattern); say so now rather than at import time.
        try:
            plan_import(document)
        except ConfigError as exc:
            for problem in exc.problems:
                self.stderr.write(f"warning: import_config would refuse this export: {problem}")
