from auditlog.admin import LogEntryAdmin
from auditlog.models import LogEntry
from django.contrib import admin

from audit.models import AuthEvent


class ConfigChangeAdmin(LogEntryAdmin):
    """auditlog's read-only view, with the client address each change came from."""

    list_display = [*LogEntryAdmin.list_display, "remote_addr"]
    readonly_fields = [*LogEntryAdmin.readonly_fields, "remote_addr"]
    fieldsets = [
        (None, {"fields": ["created", "user_url", "remote_addr", "resource_url", "cid"]}),
        *LogEntryAdmin.fieldsets[1:],
    ]


admin.site.unregister(LogEntry)
admin.site.register(LogEntry, ConfigChangeAdmin)


@admin.register(AuthEvent)
class AuthEventAdmin(admin.ModelAdmin):
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
