from __future__ import annotations

from auditlog.admin import LogEntryAdmin
from auditlog.models import LogEntry
from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from audit.export import ExportFilterError, ExportFilters, ExportFormat, ExportKind, export_response
from audit.models import AuthEvent


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=ExportFormat.choices, widget=forms.RadioSelect, initial=ExportFormat.CSV)
    since = forms.CharField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="From this day on (inclusive). Blank: from the first entry.",
    )
    until = forms.CharField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Up to and including this day. Blank: up to now.",
    )
    model = forms.CharField(
        required=False,
        help_text="Only changes to this model, as app_label.model (bots.bot, routing.routingrule).",
    )
    actor = forms.CharField(required=False, label="User", help_text="Only what this user name did.")

    def __init__(self, *args, kind: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind
        if kind != ExportKind.CHANGES:
            del self.fields["model"]

    def clean(self):
        cleaned = super().clean()
        try:
            cleaned["filters"] = ExportFilters.parse(
                kind=self.kind,
                since=cleaned.get("since"),
                until=cleaned.get("until"),
                model=cleaned.get("model", ""),
                actor=cleaned.get("actor", ""),
            )
        except ExportFilterError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return cleaned


class AuditExportMixin:
    """An "Export" page beside the changelist: a chained CSV / JSON Lines download made
    by audit.export (the same exports as the API and manage.py export_audit)."""

    export_kind: str
    change_list_template = "admin/audit/export_change_list.html"

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}_export"
        return [path("export/", self.admin_site.admin_view(self.export_view), name=name), *super().get_urls()]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        data = request.POST if request.method == "POST" else None
        initial = {"format": request.GET.get("format", ExportFormat.CSV)}
        form = ExportForm(data, kind=self.export_kind, initial=initial)
        if request.method == "POST" and form.is_valid():
            return export_response(
                form.cleaned_data["format"], form.cleaned_data["filters"], request=request, user=request.user
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Export {self.opts.verbose_name_plural}",
            "form": form,
            "kind": ExportKind(self.export_kind).label,
        }
        return TemplateResponse(request, "admin/audit/export.html", context)

    def changelist_view(self, request, extra_context=None):
        extra = {"export_url_name": f"admin:{self.opts.app_label}_{self.opts.model_name}_export"}
        return super().changelist_view(request, {**(extra_context or {}), **extra})


class ConfigChangeAdmin(AuditExportMixin, LogEntryAdmin):
    """auditlog's read-only view, with the client address each change came from."""

    export_kind = ExportKind.CHANGES
    list_display = [*LogEntryAdmin.list_display, "remote_addr"]
    readonly_fields = [*LogEntryAdmin.readonly_fields, "remote_addr"]
    fieldsets = [
        (None, {"fields": ["created", "user_url", "remote_addr", "resource_url", "cid"]}),
        *LogEntryAdmin.fieldsets[1:],
    ]


admin.site.unregister(LogEntry)
admin.site.register(LogEntry, ConfigChangeAdmin)


@admin.register(AuthEvent)
class AuthEventAdmin(AuditExportMixin, admin.ModelAdmin):
    export_kind = ExportKind.AUTH
    list_display = ["at", "kind", "username", "remote_addr", "detail"]
    list_filter = ["kind"]
    search_fields = ["username", "remote_addr"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
