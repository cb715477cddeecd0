"""Admin form plumbing that never sends a stored secret back to the browser."""

from __future__ import annotations

from django import forms

from bots.fields import EncryptedTextField


class SecretInput(forms.PasswordInput):
    def __init__(self, attrs=None):
        super().__init__(attrs={"autocomplete": "new-password", "size": 60, **(attrs or {})}, render_value=False)


class SecretFieldsAdminMixin:
    """For every EncryptedTextField: a password input that renders empty, a placeholder
    that says whether a value is stored, and a blank submission that keeps it."""

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if isinstance(db_field, EncryptedTextField):
            return forms.CharField(
                label=db_field.verbose_name.capitalize(), widget=SecretInput(), required=False,
                help_text=f"{db_field.help_text} Leave blank to keep the stored value.".strip(),
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_form(self, request, obj=None, **kwargs):
        form_class = super().get_form(request, obj, **kwargs)
        secret_names = [f.name for f in self.model._meta.fields if isinstance(f, EncryptedTextField)]

        class SecretKeepingForm(form_class):
            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                for name in secret_names:
                    if name in self.fields:
                        stored = bool(self.instance.pk and getattr(self.instance, name))
                        self.fields[name].widget.attrs["placeholder"] = (
                            "•••••••• stored — type to replace" if stored else "not set"
                        )

            def clean(self):
                cleaned = super().clean()
                for name in secret_names:
                    if name in cleaned and not cleaned[name] and self.instance.pk:
                        cleaned[name] = getattr(self.instance, name)
                return cleaned

        SecretKeepingForm.__name__ = form_class.__name__
        return SecretKeepingForm
