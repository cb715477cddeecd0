from django.contrib import admin

from channels_app.models import InboundMessage


@admin.register(InboundMessage)
class InboundMessageAdmin(admin.ModelAdmin):
    """The delivery log: read-only, written by callbacks and the dialog task."""

    list_display = [
        "received_at", "bot", "platform_message_id", "chat_type", "status", "attempts", "acked_ms", "backend",
    ]
    list_filter = ["status", "bot", "chat_type"]
    search_fields = ["platform_message_id", "chat_id", "sender_id"]
    date_hierarchy = "received_at"
    list_select_related = ["bot", "backend"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]
