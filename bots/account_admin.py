"""The console's pages for who may sign in and how: users, groups and second-factor
devices. Each way to gain access, or to sign in as someone, needs a fresh code
(bots.stepup); taking access away does not, so a compromised account is stopped at once.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse

from bots.otp_devices import AuthenticatorDevice, BackupCodeDevice
from bots.stepup import StepUpAdminMixin, is_fresh, redirect_to_step_up

User = get_user_model()
ACCESS_FLAGS = ("is_active", "is_staff", "is_superuser")


def _ids(objects) -> set[int]:
    return {obj.pk for obj in objects}


def _adds(before: set[int], after) -> bool:
    """Whether a submitted many-to-many value (None: not on the form) adds anything."""
    return after is not None and bool(_ids(after) - before)


class AccessGrantCheckMixin:
    """A change-form POST that grants access is refused without a fresh code. The form
    is validated to read what it grants; an invalid form is left to the view (it saves
    nothing and shows the errors, and the corrected submission is checked again)."""

    access_flags: tuple[str, ...] = ()
    access_relations: tuple[str, ...] = ()

    def _grants_access(self, request: HttpRequest, object_id: str) -> bool:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return False
        flags = {name: getattr(obj, name) for name in self.access_flags}
        related = {name: _ids(getattr(obj, name).all()) for name in self.access_relations}
        # The form writes the submitted values onto obj (not saved): read them first.
        form = self.get_form(request, obj, change=True)(request.POST, request.FILES, instance=obj)
        if not form.is_valid():
            return False
        data = form.cleaned_data
        return any(data.get(name, was) and not was for name, was in flags.items()) or any(
            _adds(before, data.get(name)) for name, before in related.items()
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "POST" and not is_fresh(request) and self._grants_access(request, object_id):
            return redirect_to_step_up(request, "give console access or permissions", back=request.path)
        return super().change_view(request, object_id, form_url, extra_context)


class ConsoleUserAdmin(AccessGrantCheckMixin, StepUpAdminMixin, UserAdmin):
    """Adding a user, making one active, staff or superuser, adding groups or permissions,
    and setting someone's password need a fresh code."""

    step_up_add = True
    access_flags = ACCESS_FLAGS
    access_relations = ("groups", "user_permissions")

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> HttpResponse:
        # With a password of one's choosing, an account not enrolled yet is enrolled by
        # whoever sets it; one enrolled is halfway taken over.
        if not is_fresh(request):
            return redirect_to_step_up(request, "set a user's password", back=request.path)
        return super().user_change_password(request, id, form_url)


class ConsoleGroupAdmin(AccessGrantCheckMixin, StepUpAdminMixin, GroupAdmin):
    """A group's new permissions reach every member: adding a group, or permissions to
    one, needs a fresh code."""

    step_up_add = True
    access_relations = ("permissions",)


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


admin.site.unregister(User)
admin.site.register(User, ConsoleUserAdmin)
admin.site.unregister(Group)
admin.site.register(Group, ConsoleGroupAdmin)
