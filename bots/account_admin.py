"""The console's pages for how people sign in: their second-factor devices."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from bots.otp_devices import AuthenticatorDevice, BackupCodeDevice
from bots.stepup import StepUpAdminMixin


class SecondFactorDeviceAdmin(StepUpAdminMixin, admin.ModelAdmin):
    """Devices are listed, renamed and deleted here, never added, and their secrets are
    not shown: an authenticator is set up only at sign-in (enrollment), by the person who
    just proved the password, and a new set of backup codes only by its owner
    (/admin/2fa/backup-codes/). Every page needs a fresh code."""

    list_display = ["user", "name", "confirmed", "created_at", "last_used_at"]
    list_filter = ["confirmed"]
    search_fields = ["user__username", "name"]
    fields = ["user", "name", "confirmed", "created_at", "last_used_at", "throttling_failure_count"]
    readonly_fields = ["user", "confirmed", "created_at", "last_used_at", "throttling_failure_count"]
    step_up_view = True
    step_up_change = True
    step_up_delete = True
    step_up_actions = ("delete_selected",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user")


@admin.register(AuthenticatorDevice)
class AuthenticatorDeviceAdmin(SecondFactorDeviceAdmin):
    pass


@admin.register(BackupCodeDevice)
class BackupCodeDeviceAdmin(SecondFactorDeviceAdmin):
    list_display = [*SecondFactorDeviceAdmin.list_display, "unused_codes"]
    fields = [*SecondFactorDeviceAdmin.fields, "unused_codes"]
    readonly_fields = [*SecondFactorDeviceAdmin.readonly_fields, "unused_codes"]

    @admin.display(description="unused codes")
    def unused_codes(self, obj: BackupCodeDevice) -> int:
        return obj.codes.count()

