from django.contrib import admin, messages
from django.utils.html import format_html

from bots.models import AdminAccessRule, ApiKey, Bot
from bots.secret_forms import SecretFieldsAdminMixin


@admin.register(Bot)
class BotAdmin(SecretFieldsAdminMixin, admin.ModelAdmin):
    list_display = ["name", "platform", "enabled", "default_backend", "callback_url"]
    list_filter = ["platform", "enabled"]
    search_fields = ["name", "app_id"]
    readonly_fields = ["uuid", "callback_url", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "platform", "enabled", "uuid", "callback_url"]}),
        (
            "Platform credentials",
            {"fields": ["app_id", "app_secret", "token", "encoding_aes_key", "api_base_url", "extra"]},
        ),
        ("Security", {"fields": ["allowed_ips", "rate_limit_qps"]}),
        (
            "Dialog",
            {
                "fields": [
                    "default_backend",
                    "system_prompt",
                    "context_ttl",
                    "max_context_turns",
                    "require_mention_in_groups",
                ]
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="callback URL")
    def callback_url(self, obj: Bot) -> str:
        if not obj.pk:
            return "assigned when saved"
        return format_html("<code>{}</code>", obj.callback_path)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scopes", "expires_at", "revoked", "last_used_at", "last_used_ip"]
    list_filter = ["revoked"]
    readonly_fields = ["prefix", "last_used_at", "last_used_ip", "created_at"]
    exclude = ["key_hash"]

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if not change:
            key = obj.assign_new_key()
            # The only time the key exists in clear: the database keeps its hash.
            messages.warning(request, f"API key for {obj.name}: {key} — copy it now, it will not be shown again.")
        super().save_model(request, obj, form, change)


@admin.register(AdminAccessRule)
class AdminAccessRuleAdmin(admin.ModelAdmin):
    list_display = ["cidr", "description", "enabled"]
    list_filter = ["enabled"]
