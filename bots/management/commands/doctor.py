"""Read-only checks of a Switchboard installation; see config/doctor.py."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from config.doctor import CHECKS, FAIL, OK, SKIP, Options, as_json, run_checks

LABELS = {OK: "OK", FAIL: "FAIL", SKIP: "SKIP"}


class Command(BaseCommand):
    help = (
        "Check settings, secrets, database, migrations, Redis, the broker, a live worker, beat, "
        "gunicorn's port, nginx, the TLS certificate, the clock, disk space and logs. Changes nothing. "
        "Exits 1 when any check fails."
    )
    requires_system_checks = []  # the settings check runs them and reports them as one line

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the results as JSON")
        parser.add_argument("--skip", default="", help=f"comma-separated checks to skip: {', '.join(CHECKS)}")
        parser.add_argument(
            "--worker-timeout", type=float, default=3.0, help="seconds to wait for workers to answer a ping (3)"
        )

    def handle(self, *args, json: bool = False, skip: str = "", worker_timeout: float = 3.0, **options):
        skipped = frozenset(name.strip() for name in skip.split(",") if name.strip())
        unknown = skipped - set(CHECKS)
        if unknown:
            raise CommandError(
                f"--skip: no check named {', '.join(sorted(unknown))}; the checks are {', '.join(CHECKS)}"
            )
        results = run_checks(Options(worker_timeout=worker_timeout), skipped)
        failed = [r for r in results if r.status == FAIL]
        if json:
            self.stdout.write(as_json(results))
        else:
            width = max(len(name) for name in CHECKS)
            for result in results:
                style = {OK: self.style.SUCCESS, FAIL: self.style.ERROR}.get(result.status, str)
                label = style(LABELS[result.status].ljust(5))
                self.stdout.write(f"{label} {result.name.ljust(width)}  {result.detail}")
                if result.fix:
                    self.stdout.write(f"{'':5} {'':{width}}  fix: {result.fix}")
            summary = f"{len(failed)} of {len(results)} checks failed." if failed else "All checks passed."
            self.stdout.write(summary)
        if failed:
            sys.exit(1)
