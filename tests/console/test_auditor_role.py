"""The Auditors group: the audit log (configuration changes and sign-in events), its
export, and nothing else in the console."""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
from io import StringIO

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.core.management import CommandError, call_command

from audit.export import verify_export
from audit.models import AuthEvent, AuthEventKind
from audit.roles import AUDITORS_GROUP
from bots.models import AdminAccessRule, ApiKey, Bot

AUDITOR_PERMISSIONS = {"auditlog.view_logentry", "audit.view_authevent"}


def group_permissions() -> set[str]:
    group = Group.objects.get(name=AUDITORS_GROUP)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def test_the_migration_creates_the_group_with_the_audit_permissions_only(db):
    Group.objects.filter(name=AUDITORS_GROUP).delete()
    migration = importlib.import_module("audit.migrations.0003_auditors_group")
    migration.create_group(apps, None)
    migration.create_group(apps, None)  # idempotent
    assert group_permissions() == AUDITOR_PERMISSIONS
    migration.remove_group(apps, None)
    assert not Group.objects.filter(name=AUDITORS_GROUP).exists()


def test_the_command_puts_the_permissions_back_and_adds_auditors(db, django_user_model):
    Group.objects.filter(name=AUDITORS_GROUP).delete()
    group = Group.objects.create(name=AUDITORS_GROUP)
    group.permissions.add(Permission.objects.get(codename="change_bot"))
    django_user_model.objects.create_user(username="audrey", is_staff=True)
    out = StringIO()
    call_command("create_auditor_group", "audrey", stdout=out)
    assert group_permissions() == AUDITOR_PERMISSIONS
    assert "audrey is an auditor." in out.getvalue()
    assert django_user_model.objects.get(username="audrey").groups.filter(name=AUDITORS_GROUP).exists()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"is_staff": False}, "audrey is not a staff user"),
        ({"is_staff": True, "is_superuser": True}, "audrey is a superuser and sees everything"),
    ],
)
def test_the_command_refuses_accounts_that_cannot_be_auditors(db, django_user_model, fields, error):
    django_user_model.objects.create_user(username="audrey", **fields)
    with pytest.raises(CommandError, match=error):
        call_command("create_auditor_group", "audrey")
    with pytest.raises(CommandError, match="There is no user named 'nobody'"):
        call_command("create_auditor_group", "nobody")


def test_an_auditor_sees_the_audit_log_and_nothing_else(auditor_console, make_bot):
    bot = make_bot()
    key, _ = ApiKey.issue(name="crm")
    rule = AdminAccessRule.objects.create(cidr="192.0.2.0/24")
    index = auditor_console.get("/admin/")
    assert index.status_code == 200
    models = {m["object_name"] for app in index.context["app_list"] for m in app["models"]}
    assert models == {"LogEntry", "AuthEvent"}

    assert auditor_console.get("/admin/auditlog/logentry/").status_code == 200
    assert auditor_console.get("/admin/audit/authevent/").status_code == 200
    refused = [
        "/admin/bots/bot/",
        f"/admin/bots/bot/{bot.pk}/change/",
        f"/admin/bots/bot/{bot.pk}/reveal/",
        f"/admin/bots/bot/{bot.pk}/test-message/",
        f"/admin/bots/bot/{bot.pk}/check-callback/",
        "/admin/bots/apikey/",
        f"/admin/bots/apikey/{key.pk}/change/",
        "/admin/bots/adminaccessrule/",
        f"/admin/bots/adminaccessrule/{rule.pk}/change/",
        "/admin/routing/modelbackend/",
        "/admin/routing/routingrule/",
        "/admin/channels_app/inboundmessage/",
        "/admin/auth/user/",
        "/admin/auth/group/",
    ]
    for page in refused:
        assert auditor_console.get(page).status_code == 403, page
    assert auditor_console.post(f"/admin/bots/bot/{bot.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Bot.objects.filter(pk=bot.pk).exists()
    # Read-only even where they may look.
    entry_page = auditor_console.get("/admin/auditlog/logentry/").content.decode()
    assert 'id="export-csv"' in entry_page and 'id="export-jsonl"' in entry_page


def test_an_auditor_exports_the_change_log_as_chained_csv(auditor_console, auditor, console):
    console.post("/admin/bots/adminaccessrule/add/", {"cidr": "198.51.100.0/24", "description": "vpn", "enabled": "on"})
    page = auditor_console.get("/admin/auditlog/logentry/export/?format=csv")
    assert page.status_code == 200
    assert re.search(r'<input type="radio" name="format" value="csv"[^>]*checked', page.content.decode())

    response = auditor_console.post(
        "/admin/auditlog/logentry/export/", {"format": "csv", "model": "bots.adminaccessrule"}, REMOTE_ADDR="10.4.4.4"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-changes-')
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(text)))
    columns = rows[1]
    [row] = [dict(zip(columns, values, strict=True)) for values in rows[2:-1]]
    assert (row["model"], row["actor"], row["action"]) == ("bots.adminaccessrule", "alice", "create")
    assert json.loads(row["changes"])["cidr"] == ["None", "198.51.100.0/24"]
    result = verify_export(io.StringIO(text))
    assert result.ok and result.rows == 1, result.message

    [event] = AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED)
    assert event.user == auditor and event.remote_addr == "10.4.4.4"
    assert f"sha256={result.final_hash}" in event.detail


def test_an_auditor_exports_sign_in_events_as_json_lines(auditor_console):
    response = auditor_console.post("/admin/audit/authevent/export/", {"format": "jsonl", "actor": "audrey"})
    assert response["Content-Type"] == "application/jsonl; charset=utf-8"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    kinds = [line.get("kind") for line in lines[1:-1]]
    assert kinds == ["login"]
    assert lines[0]["kind"] == "auth" and lines[0]["filters"]["actor"] == "audrey"


def test_a_bad_date_range_is_refused_on_the_form(auditor_console):
    response = auditor_console.post(
        "/admin/auditlog/logentry/export/", {"format": "csv", "since": "2026-03-02", "until": "2026-03-01"}
    )
    assert response.status_code == 200
    assert b"must be after since" in response.content
    response = auditor_console.post("/admin/auditlog/logentry/export/", {"format": "csv", "model": "nonsense"})
    assert b"is not a known model" in response.content
    assert not AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED).exists()


def test_the_sign_in_event_export_has_no_model_filter(auditor_console):
    page = auditor_console.get("/admin/audit/authevent/export/").content.decode()
    assert 'name="actor"' in page and 'name="model"' not in page


def test_export_needs_view_permission_on_the_log(console, django_user_model):
    from django.test import Client

    from bots.otp_devices import AuthenticatorDevice
    from tests.fixtures import PASSWORD, sign_in

    operator = django_user_model.objects.create_user(username="op", password=PASSWORD, is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="view_bot"))
    client = Client()
    sign_in(client, "op", AuthenticatorDevice.objects.create(user=operator, name="phone", confirmed=True))
    assert client.get("/admin/auditlog/logentry/export/").status_code == 403
    assert client.post("/admin/auditlog/logentry/export/", {"format": "csv"}).status_code == 403
    assert not AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED).exists()
