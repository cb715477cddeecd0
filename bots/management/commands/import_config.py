"""Create or update backends, bots, routing rules and console access rules from a JSON
file (docs/config-as-code.md): all of it or, if anything is wrong, none of it."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import IO

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import URLValidator
from django.db import IntegrityError

from bots.config_io import Action, Change, ConfigError, ImportPlan, import_document, load_document
from bots.models import Bot


class Command(BaseCommand):
    help = "Import backends, bots, routing rules and admin access rules from a JSON file (- for stdin)."
    # call_command(..., stdin=StringIO(...)) feeds "-" in tests, as loaddata allows.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="the JSON file, or - to read standard input")
        parser.add_argument("--dry-run", action="store_true", help="check and show what would change; write nothing")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="delete global rules, and rules of the bots in the file, that the file does not list",
        )
        parser.add_argument("--actor", metavar="USERNAME", help="the console user the audit log names for this import")
        parser.add_argument(
            "--base-url",
            metavar="URL",
            help="print full callback URLs under this origin, e.g. https://bots.example.com",
        )

    def handle(
        self, *args, file: str, dry_run: bool, prune: bool, actor: str | None, base_url: str | None, **options
    ) -> None:
        base_url = _checked_base_url(base_url)
        user = _actor(actor) if actor else None
        # Bytes, not text: the audit log records the hash of exactly what was imported.
        raw, source = self._read(file, options.get("stdin") or sys.stdin.buffer)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CommandError(f"{source}: not UTF-8 text (byte {exc.start}).") from None
        audit_data = {"source": "import_config", "file": source, "sha256": hashlib.sha256(raw).hexdigest()}
        try:
            plan = import_document(
                load_document(text, source), prune=prune, dry_run=dry_run, actor=user, audit_data=audit_data
            )
        except ConfigError as exc:
            listing = "\n".join(f"  {problem}" for problem in exc.problems)
            raise CommandError(
                f"{source}: refused; nothing was written. {len(exc.problems)} problem(s):\n{listing}"
            ) from None
        except IntegrityError as exc:
            # Someone changed the same rows between our checks and our writes.
            reason = str(exc).strip().splitlines()[0]
            raise CommandError(f"{source}: the database refused a write ({reason}); nothing was written.") from None
        self._report(plan, dry_run, base_url)

    def _read(self, file: str, stdin: IO[str] | IO[bytes]) -> tuple[bytes, str]:
        if file == "-":
            data = stdin.read()
            return (data.encode("utf-8") if isinstance(data, str) else data), "<stdin>"
        try:
            return Path(file).read_bytes(), file
        except OSError as exc:
            raise CommandError(f"{file}: cannot be read: {exc.strerror}.") from None

    def _report(self, plan: ImportPlan, dry_run: bool, base_url: str) -> None:
        if dry_run:
            self.stdout.write("Dry run: nothing is written. The import would do this:")
        for change in plan.changes:
            line = f"{change.kind} {change.label}: {change.action}"
            if change.action == Action.UPDATED:
                line += f" ({', '.join(change.changed)})"
            elif change.action == Action.DELETED:
                line += " (not in the file; --prune)"
            self.stdout.write(line)
            if isinstance(change.obj, Bot):
                self.stdout.write(self._callback_line(change, dry_run, base_url))
                if "uuid" in change.changed:
                    self.stderr.write(
                        f"warning: bot {change.label}: the file changes its uuid, so its callback URL moves; "
                        "set the new URL in the platform's console."
                    )
        counts = ", ".join(f"{plan.count(action)} {action}" for action in Action)
        self.stdout.write(f"{'Would be' if dry_run else 'Done'}: {counts}.")

    @staticmethod
    def _callback_line(change: Change, dry_run: bool, base_url: str) -> str:
        if dry_run and change.action == Action.CREATED and "uuid" not in change.given:
            return "    uuid and callback URL: assigned by the import"
        bot = change.obj
        return f"    uuid {bot.uuid}, callback URL {base_url}{bot.callback_path}"


def _checked_base_url(base_url: str | None) -> str:
    if not base_url:
        return ""
    try:
        URLValidator(schemes=["http", "https"])(base_url)
    except ValidationError:
        raise CommandError(f"--base-url {base_url!r} is not an http(s) URL, e.g. https://bots.example.com") from None
    return base_url.rstrip("/")


def _actor(username: str) -> AbstractBaseUser:
    user_model = get_user_model()
    try:
        return user_model._default_manager.get_by_natural_key(username)
    except user_model.DoesNotExist:
        raise CommandError(f"--actor: there is no user named {username!r} (user names are case-sensitive).") from None
