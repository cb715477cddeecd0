from django.contrib import admin

from bots.secret_forms import SecretFieldsAdminMixin
from bots.stepup import StepUpAdminMixin
from routing.models import ModelBackend, RoutingRule


@admin.register(ModelBackend)
class ModelBackendAdmin(StepUpAdminMixin, SecretFieldsAdminMixin, admin.ModelAdmin):
    list_display = ["name", "kind", "model", "base_url", "timeout", "enabled"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "model"]
    # A model provider's API key is a secret like a bot's: replacing it needs a fresh code.
    step_up_secret_changes = True


@admin.register(RoutingRule)
class RoutingRuleAdmin(admin.ModelAdmin):
    list_display = ["__str__", "bot", "priority", "match", "pattern", "backend", "fallback_backend", "enabled"]
    list_filter = ["match", "enabled", "bot"]
    list_select_related = ["bot", "backend", "fallback_backend"]
