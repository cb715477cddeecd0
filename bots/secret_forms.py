"""Admin form plumbing that never sends a stored secret back to the browser.

A secret typed into a form that then fails validation is sent back in the password
input of that same response, so fixing another field and saving keeps it. That
response is the only page that carries it: it answers the POST that brought the value
(over the same connection, from the same browser), and the admin marks it no-store, so
no cache or later page holds it. A stored secret is never rendered: the widget shows
only what this submission posted, and the form drops stored secrets from its initial
data. The alternative, an encrypted copy in a hidden field, would put a replayable
credential in the page for as long as the token lived and leave the inputs looking
empty, so an admin could not tell whether the value was kept.
"""

from __future__ import annotations

from django import forms
from django.utils.text import capfirst

from bots.fields import EncryptedTextField


class SecretInput(forms.PasswordInput):
    """A password input that renders only a value posted with this very request."""

    def __init__(self, attrs=None):
        super().__init__(attrs={"autocomplete": "new-password", "size": 60, **(attrs or {})}, render_value=False)


def secret_field_names(model) -> list[str]:
    return [f.name for f in model._meta.fields if isinstance(f, EncryptedTextField)]


class SecretFieldsAdminMixin:
    """For every EncryptedTextField: a password input that never shows a stored value, a
    placeholder that says whether one is stored, a blank submission that keeps it, and a
    value typed into a form that failed validation carried back into the same input."""

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if isinstance(db_field, EncryptedTextField):
            return forms.CharField(
                label=capfirst(db_field.verbose_name),
                widget=SecretInput(),
                required=False,
                help_text=db_field.help_text,
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_form(self, request, obj=None, **kwargs):
        form_class = super().get_form(request, obj, **kwargs)
        secret_names = secret_field_names(self.model)

        class SecretKeepingForm(form_class):
            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                for name in secret_names:
                    if name in self.fields:
                        self._prepare_secret_field(name)

            def _prepare_secret_field(self, name: str) -> None:
                field = self.fields[name]
                # The stored value must not reach the widget, whatever renders it.
                self.initial.pop(name, None)
                # Bound: the value comes from this POST's data, never from the database.
                field.widget.render_value = self.is_bound
                stored = bool(self.instance.pk and getattr(self.instance, name))
                field.widget.attrs["placeholder"] = "•••••••• stored — type to replace" if stored else "not set"
                if self.instance.pk:
                    field.help_text = f"{field.help_text} Leave blank to keep the stored value.".strip()

            def clean(self):
                # Before the form's own clean(), so its checks see the value the bot
                # will have, not the blank that means "keep it".
                for name in secret_names:
                    if name in self.cleaned_data and not self.cleaned_data[name] and self.instance.pk:
                        self.cleaned_data[name] = getattr(self.instance, name)
                return super().clean()

        SecretKeepingForm.__name__ = form_class.__name__
        return SecretKeepingForm
