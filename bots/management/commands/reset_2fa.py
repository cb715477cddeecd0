"""Forget a console user's second factor, for a lost or replaced phone.

The user keeps their password; at the next sign-in they are sent through enrollment
again. Sessions already verified with a removed device stop counting as verified
(django-otp finds no device behind them), so they are sent back to sign in.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_otp import devices_for_user

from audit.events import record_auth_event
from audit.models import AuthEventKind


class Command(BaseCommand):
    help = "Delete a user's OTP devices (authenticator app and backup codes) so they enroll again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the console user name whose phone was lost")

    def handle(self, *args, username: str, **options) -> None:
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"There is no user named {username!r} (user names are case-sensitive).") from None
        # confirmed=None: an enrollment left half-done must go too, or its old key would
        # come back on the enrollment page.
        with transaction.atomic():
            devices = list(devices_for_user(user, confirmed=None))
            for device in devices:
                device.delete()
            record_auth_event(AuthEventKind.OTP_RESET, None, user=user, detail="manage.py reset_2fa")
        if devices:
            names = ", ".join(sorted(f"{type(d)._meta.verbose_name} {d.name!r}" for d in devices))
            self.stdout.write(
                f"Removed {len(devices)} device(s) of {username}: {names}. "
                "They will set up an authenticator app at their next sign-in."
            )
        else:
            self.stdout.write(f"{username} had no OTP devices; they will set one up at their next sign-in.")
