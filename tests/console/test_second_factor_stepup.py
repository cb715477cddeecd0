"""Step-up guards the second factor itself and who may sign in: every second-factor device
page, new backup codes, adding users and granting staff, superuser, groups or permissions
need a fresh code. A device's seed and backup codes are never shown after enrollment.

The device pages are found in the admin's registry (every model that is a django-otp
device), so a device type added later is covered too."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse
from django_otp import devices_for_user
from django_otp.models import Device

from tests.console.conftest import STEP_UP, make_stale, sent_to_step_up
from tests.fixtures import PASSWORD, fresh_code
from tests.second_factor import backup_codes_on, enroll_by_hand, sign_in_with


def device_admins() -> list:
    return [model for model in admin.site._registry if issubclass(model, Device)]


def device_pages(user) -> list[str]:
    """Every console page about this user's devices: the lists, and each device's page
    and history."""
    pages = [reverse(f"admin:{m._meta.app_label}_{m._meta.model_name}_changelist") for m in device_admins()]
    for device in devices_for_user(user, confirmed=None):
        meta = device._meta
        pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[device.pk]))
        pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_history", args=[device.pk]))
    return pages


@pytest.fixture
def carol(django_user_model):
    """Carol enrolled by hand; alice's console looks at her devices."""
    user = django_user_model.objects.create_user(username="carol", password=PASSWORD, is_staff=True)
    return user, enroll_by_hand(Client(), "carol")


def step_up(client, device, back: str) -> None:
    response = client.post(STEP_UP, {"code": fresh_code(device), "next": back})
    assert response.status_code == 302 and response["Location"] == back


def test_the_console_has_pages_for_both_kinds_of_device(carol):
    assert len(device_admins()) == 2
    user, _ = carol
    assert len(device_pages(user)) == 2 + 2 * 2


def test_no_device_page_shows_a_seed_or_a_backup_code(console, carol):
    user, enrolled = carol
    for page in device_pages(user):
        response = console.get(page)
        assert response.status_code == 200, page
        content = response.content.decode()
        for secret in [*enrolled.seed_forms(), *enrolled.backup_codes]:
            assert secret not in content, f"{page} shows a secret"


def test_every_device_page_needs_a_fresh_code(stale_console, carol):
    user, _ = carol
    for page in device_pages(user):
        response = stale_console.get(page)
        assert sent_to_step_up(response, page), page


def test_no_device_can_be_added_in_the_console_even_with_a_fresh_code(console, carol):
    """A device with a seed the adding admin knows would be a way to sign in as its user."""
    user, _ = carol
    chosen = "3132333435363738393031323334353637383930"
    before = {d.persistent_id for d in devices_for_user(user, confirmed=None)}
    for model in device_admins():
        add = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")
        assert console.get(add).status_code == 403
        response = console.post(
            add,
            {
                "user": user.pk,
                "name": "mine",
                "confirmed": "on",
                "key": chosen,
                "step": "30",
                "t0": "0",
                "digits": "6",
                "tolerance": "1",
                "drift": "0",
            },
        )
        assert response.status_code == 403
    assert {d.persistent_id for d in devices_for_user(user, confirmed=None)} == before


def test_deleting_a_device_needs_a_fresh_code(stale_console, totp_device, carol):
    user, enrolled = carol
    [app] = [d for d in devices_for_user(user) if hasattr(d, "bin_key")]
    delete = reverse("admin:bots_authenticatordevice_delete", args=[app.pk])
    assert sent_to_step_up(stale_console.post(delete, {"post": "yes"}), delete)
    changelist = reverse("admin:bots_authenticatordevice_changelist")
    response = stale_console.post(
        changelist, {"action": "delete_selected", "_selected_action": [app.pk], "post": "yes"}
    )
    assert sent_to_step_up(response, changelist)
    assert sign_in_with("carol", enrolled.app_code(offset_steps=1)) is not None

    step_up(stale_console, totp_device, delete)
    assert stale_console.post(delete, {"post": "yes"}).status_code == 302
    assert not type(app).objects.filter(pk=app.pk).exists()


# -- backup codes ------------------------------------------------------------------------------


def test_new_backup_codes_need_a_fresh_code(staff_user):
    client = Client()
    enrolled = enroll_by_hand(client, staff_user.username)
    make_stale(client)
    response = client.post("/admin/2fa/backup-codes/")
    assert sent_to_step_up(response, "/admin/2fa/backup-codes/")
    assert not backup_codes_on(client.get("/admin/2fa/backup-codes/").content.decode())
    # The old set still stands.
    assert sign_in_with(staff_user.username, enrolled.backup_codes[0]) is not None

    response = client.post(STEP_UP, {"code": enrolled.app_code(offset_steps=1), "next": "/admin/2fa/backup-codes/"})
    assert response["Location"] == "/admin/2fa/backup-codes/"
    assert len(backup_codes_on(client.post("/admin/2fa/backup-codes/").content.decode())) == 10
    assert sign_in_with(staff_user.username, enrolled.backup_codes[1]) is None


# -- users and groups ------------------------------------------------------------------------------


def user_form(user, **changes) -> dict:
    form = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": "",
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
    }
    for flag in ("is_active", "is_staff", "is_superuser"):
        if getattr(user, flag):
            form[flag] = "on"
    form["groups"] = [g.pk for g in user.groups.all()]
    form["user_permissions"] = [p.pk for p in user.user_permissions.all()]
    form.update(changes)
    return {name: value for name, value in form.items() if value is not None}


@pytest.fixture
def dave(django_user_model):
    return django_user_model.objects.create_user(username="dave", password=PASSWORD)


def test_adding_a_user_needs_a_fresh_code(stale_console, django_user_model):
    add = "/admin/auth/user/add/"
    assert sent_to_step_up(stale_console.get(add), add)
    form = {"username": "mallory", "password1": PASSWORD, "password2": PASSWORD, "usable_password": "true"}
    assert sent_to_step_up(stale_console.post(add, form), add)
    assert not django_user_model.objects.filter(username="mallory").exists()


@pytest.mark.parametrize(
    "grant",
    [{"is_staff": "on"}, {"is_staff": "on", "is_superuser": "on"}, {"groups": "any"}, {"user_permissions": "any"}],
    ids=["staff", "superuser", "group", "permission"],
)
def test_granting_access_needs_a_fresh_code(stale_console, totp_device, dave, grant):
    group, _ = Group.objects.get_or_create(name="operators")
    permission = Permission.objects.get(codename="change_bot")
    values = {"groups": [group.pk], "user_permissions": [permission.pk]}
    grant = {name: values.get(name, value) if value == "any" else value for name, value in grant.items()}
    change = f"/admin/auth/user/{dave.pk}/change/"
    assert sent_to_step_up(stale_console.post(change, user_form(dave, **grant)), change)
    dave.refresh_from_db()
    assert not (dave.is_staff or dave.is_superuser or dave.groups.exists() or dave.user_permissions.exists())

    step_up(stale_console, totp_device, change)
    assert stale_console.post(change, user_form(dave, **grant)).status_code == 302
    dave.refresh_from_db()
    assert dave.is_staff or dave.groups.exists() or dave.user_permissions.exists()


def test_taking_access_away_and_other_changes_need_no_fresh_code(stale_console, django_user_model):
    staff = django_user_model.objects.create_user(username="erin", password=PASSWORD, is_staff=True)
    change = f"/admin/auth/user/{staff.pk}/change/"
    response = stale_console.post(change, user_form(staff, email="erin@example.com", is_staff=None))
    assert response.status_code == 302 and response["Location"] == "/admin/auth/user/"
    staff.refresh_from_db()
    assert not staff.is_staff and staff.email == "erin@example.com"


def test_setting_someones_password_needs_a_fresh_code(stale_console, dave):
    page = f"/admin/auth/user/{dave.pk}/password/"
    assert sent_to_step_up(stale_console.get(page), page)
    response = stale_console.post(
        page, {"password1": "another long pass 43", "password2": "another long pass 43", "usable_password": "true"}
    )
    assert sent_to_step_up(response, page)
    dave.refresh_from_db()
    assert dave.check_password(PASSWORD)


def test_giving_a_group_permissions_needs_a_fresh_code(stale_console, totp_device):
    group = Group.objects.create(name="operators")
    add = "/admin/auth/group/add/"
    assert sent_to_step_up(stale_console.get(add), add)
    permission = Permission.objects.get(codename="change_bot")
    change = f"/admin/auth/group/{group.pk}/change/"
    assert sent_to_step_up(stale_console.post(change, {"name": "operators", "permissions": [permission.pk]}), change)
    assert not group.permissions.exists()
    # Renaming gives nobody anything.
    assert stale_console.post(change, {"name": "ops"}).status_code == 302
    group.refresh_from_db()
    assert group.name == "ops"
