"""Step-up: sensitive console actions need a second-factor code entered in the last
five minutes.

The time of the last accepted code (at sign-in, or on the step-up page) is kept in the
session. A request for a sensitive action without a fresh code is sent to the step-up
page and, once a code is accepted, back to where it came from. A form submitted
without a fresh code is not carried over (that would mean keeping typed secrets in the
session): the admin is sent back to the form and told to submit it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.admin.utils import model_format_dict
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

from bots.fields import EncryptedTextField

FRESH_SECONDS = 300
VERIFIED_AT_KEY = "switchboard_otp_verified_at"
REASON_KEY = "switchboard_step_up_reason"


def mark_fresh(request: HttpRequest) -> None:
    """Remember that this session has just proved its second factor."""
    request.session[VERIFIED_AT_KEY] = time.time()


def seconds_since_code(request: HttpRequest) -> float | None:
    verified_at = request.session.get(VERIFIED_AT_KEY)
    return None if verified_at is None else time.time() - verified_at


def is_fresh(request: HttpRequest) -> bool:
    age = seconds_since_code(request)
    return age is not None and age <= FRESH_SECONDS


def fresh_seconds_left(request: HttpRequest) -> int:
    age = seconds_since_code(request)
    return 0 if age is None else max(0, int(FRESH_SECONDS - age))


def redirect_to_step_up(request: HttpRequest, reason: str, back: str | None = None) -> HttpResponse:
    """Send the admin to the step-up page, to come back to `back` (this page for a GET;
    for a POST, the page the form is on: the submission itself is not kept)."""
    if back is None:
        back = request.get_full_path()
    if request.method == "POST":
        messages.warning(
            request,
            f"Nothing was saved yet: to {reason} you need a fresh code from your authenticator app. "
            "Enter it, then submit again.",
        )
    request.session[REASON_KEY] = reason
    return redirect(f"{reverse('twofactor:step_up')}?{urlencode({'next': back})}")


def step_up_required(reason: str) -> Callable:
    """Decorator for a view that may run only with a fresh second-factor code."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not is_fresh(request):
                return redirect_to_step_up(request, reason, back=request.path)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def _secret_fields(model) -> list[str]:
    return [f.name for f in model._meta.fields if isinstance(f, EncryptedTextField)]


class StepUpAdminMixin:
    """ModelAdmin options for step-up:

    - step_up_add / step_up_change / step_up_delete: these views need a fresh code
      (GET too, so the admin confirms before filling in a form, not after);
    - step_up_view: every page of the model needs one, the list and read-only views
      too (for what tells how someone signs in: their second-factor devices);
    - step_up_secret_changes: saving a new value into a secret field needs a fresh code
      (blank keeps the stored value, so only a typed value counts);
    - step_up_actions: names of changelist actions that need a fresh code.
    """

    step_up_add = False
    step_up_change = False
    step_up_delete = False
    step_up_view = False
    step_up_secret_changes = False
    step_up_actions: tuple[str, ...] = ()

    def _step_up_name(self) -> str:
        name = str(self.model._meta.verbose_name)
        return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"

    def _changes_a_secret(self, request: HttpRequest, object_id: str) -> bool:
        """Whether this submission replaces a stored secret (a new bot's first secrets
        are not a rotation, so adding needs no step-up for them)."""
        if request.method != "POST" or not self.step_up_secret_changes:
            return False
        obj = self.get_object(request, object_id)
        if obj is None:
            return False
        return any(
            request.POST.get(name, "") not in ("", str(getattr(obj, name))) for name in _secret_fields(self.model)
        )

    def add_view(self, request, form_url="", extra_context=None):
        if self.step_up_add and not is_fresh(request):
            return redirect_to_step_up(request, f"add {self._step_up_name()}", back=request.path)
        return super().add_view(request, form_url, extra_context)

    def changelist_view(self, request, extra_context=None):
        if self.step_up_view and not is_fresh(request):
            plural = str(self.model._meta.verbose_name_plural)
            return redirect_to_step_up(request, f"see the {plural}", back=request.get_full_path())
        return super().changelist_view(request, extra_context)

    def history_view(self, request, object_id, extra_context=None):
        if self.step_up_view and not is_fresh(request):
            return redirect_to_step_up(request, f"see {self._step_up_name()}", back=request.path)
        return super().history_view(request, object_id, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not is_fresh(request):
            if self.step_up_change and (request.method == "POST" or self.has_change_permission(request)):
                return redirect_to_step_up(request, f"change {self._step_up_name()}", back=request.path)
            if self.step_up_view:
                return redirect_to_step_up(request, f"see {self._step_up_name()}", back=request.path)
            if self._changes_a_secret(request, object_id):
                return redirect_to_step_up(request, "change a secret", back=request.path)
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        if self.step_up_delete and not is_fresh(request):
            return redirect_to_step_up(request, f"delete {self._step_up_name()}", back=request.path)
        return super().delete_view(request, object_id, extra_context)

    def get_actions(self, request):
        actions = super().get_actions(request)
        for name in self.step_up_actions:
            if name in actions:
                func, action_name, description = actions[name]
                reason = str(description) % model_format_dict(self.opts)
                actions[name] = (_guarded_action(func, reason), action_name, description)
        return actions


def _guarded_action(func: Callable, description: str) -> Callable:
    @wraps(func)
    def guarded(modeladmin, request, queryset):
        if not is_fresh(request):
            return redirect_to_step_up(request, description[:1].lower() + description[1:], back=request.get_full_path())
        return func(modeladmin, request, queryset)

    return guarded
