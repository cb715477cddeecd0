from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from audit.events import record_auth_event
from audit.models import AuthEventKind


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs):
    record_auth_event(AuthEventKind.LOGIN, request, user=user)


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs):
    record_auth_event(AuthEventKind.LOGOUT, request, user=user)


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs):
    # credentials has the password blanked by Django; only the username is kept.
    record_auth_event(AuthEventKind.LOGIN_FAILED, request, username=str(credentials.get("username", "")))
