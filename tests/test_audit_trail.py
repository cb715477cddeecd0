"""Every change to configuration through the console leaves an audit entry with the
actor, the client address and secrets masked; sign-in activity is recorded too."""

from __future__ import annotations

import json

import pytest
from auditlog.context import set_actor
from auditlog.models import LogEntry
from django.contrib.auth.models import Group, User
from django.contrib.contenttypes.models import ContentType

from audit.models import AuthEvent, AuthEventKind
from bots.models import AdminAccessRule, ApiKey, Bot
from bots.otp_devices import AuthenticatorDevice
from routing.models import ModelBackend, RoutingRule
from tests.conftest import PASSWORD, fresh_code, sign_in

ADMIN_IP = "10.9.8.7"
BOT_SECRET = "s3cr3t-app-secret-abcdef"
BOT_AES_KEY = "Zm9ybS10ZXN0LWtleS1mb3ItYXVkaXQtdHJhaWwtMDA"
BACKEND_KEY = "sk-live-0123456789abcdef"


def entries(model, pk) -> list[LogEntry]:
    ct = ContentType.objects.get_for_model(model)
    return list(LogEntry.objects.filter(content_type=ct, object_pk=str(pk)).order_by("timestamp", "id"))


def post(console, url: str, data: dict) -> None:
    response = console.post(url, data, REMOTE_ADDR=ADMIN_IP)
    assert response.status_code == 302, response.content.decode()[:3000]


def bot_form(name: str, **changes) -> dict:
    return {
        "name": name,
        "platform": "wecom",
        "enabled": "on",
        "app_id": "ww0001",
        "app_secret": BOT_SECRET,
        "token": "tok-123456",
        "encoding_aes_key": BOT_AES_KEY,
        "api_base_url": "",
        "extra": '{"agent_id": 1000002}',
        "allowed_ips": '["203.0.113.0/24"]',
        "rate_limit_qps": "10",
        "system_prompt": "be brief",
        "default_backend": "",
        "context_ttl": "1800",
        "max_context_turns": "10",
        "require_mention_in_groups": "on",
        **changes,
    }


def backend_form(name: str, **changes) -> dict:
    return {
        "name": name,
        "kind": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m1",
        "api_key": BACKEND_KEY,
        "timeout": "30",
        "max_tokens": "",
        "enabled": "on",
        **changes,
    }


CASES = {
    # model: (admin path, form for create, changes for update, lookup by)
    Bot: (
        "bots/bot",
        bot_form("audited"),
        {"system_prompt": "be kind", "app_secret": "another-secret-999"},
        {"name": "audited"},
    ),
    ModelBackend: ("routing/modelbackend", backend_form("gpt"), {"timeout": "12"}, {"name": "gpt"}),
    AdminAccessRule: (
        "bots/adminaccessrule",
        {"cidr": "198.51.100.0/24", "description": "vpn", "enabled": "on"},
        {"description": "vpn gateway"},
        {"cidr": "198.51.100.0/24"},
    ),
    Group: ("auth/group", {"name": "auditors"}, {"name": "auditors-eu"}, {}),
    ApiKey: (
        "bots/apikey",
        {
            "name": "crm",
            "scopes": ["chat"],
            "allowed_cidrs": "[]",
            "expires_at_0": "2030-01-01",
            "expires_at_1": "00:00:00",
        },
        {"name": "crm-2", "revoked": "on"},
        {},
    ),
}


@pytest.mark.parametrize("model", list(CASES), ids=lambda m: m.__name__)
def test_console_create_update_delete_are_audited(console, staff_user, model):
    path, create, update, lookup = CASES[model]
    post(console, f"/admin/{path}/add/", create)
    obj = model.objects.get(**lookup) if lookup else model.objects.latest("pk")
    post(console, f"/admin/{path}/{obj.pk}/change/", {**create, **update})
    pk = obj.pk
    post(console, f"/admin/{path}/{pk}/delete/", {"post": "yes"})
    assert not model.objects.filter(pk=pk).exists()

    log = entries(model, pk)
    assert [e.action for e in log] == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE, LogEntry.Action.DELETE]
    for entry in log:
        assert entry.actor == staff_user
        assert entry.remote_addr == ADMIN_IP
    changed_fields = set(json.loads(log[1].changes) if isinstance(log[1].changes, str) else log[1].changes)
    assert changed_fields, "the update entry names what changed"


def test_rule_changes_are_audited(console, staff_user, make_bot, backend):
    bot = make_bot()
    form = {
        "bot": bot.pk,
        "priority": "10",
        "match": "keyword",
        "pattern": "invoice",
        "backend": backend.pk,
        "fallback_backend": "",
        "enabled": "on",
    }
    post(console, "/admin/routing/routingrule/add/", form)
    rule = RoutingRule.objects.get(pattern="invoice")
    post(console, f"/admin/routing/routingrule/{rule.pk}/change/", {**form, "pattern": "receipt"})
    log = entries(RoutingRule, rule.pk)
    assert [e.action for e in log] == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]
    assert log[1].changes_dict["pattern"] == ["invoice", "receipt"]
    assert {e.actor for e in log} == {staff_user}


def test_secrets_are_masked_in_every_audit_entry(console):
    post(console, "/admin/bots/bot/add/", bot_form("masked"))
    bot = Bot.objects.get(name="masked")
    post(console, f"/admin/bots/bot/{bot.pk}/change/", bot_form("masked", app_secret="rotated-secret-0000"))
    post(console, "/admin/routing/modelbackend/add/", backend_form("masked-backend"))
    everything = " ".join(str(e.changes) + str(e.serialized_data or "") for e in LogEntry.objects.all())
    for secret in (BOT_SECRET, "rotated-secret-0000", "tok-123456", BOT_AES_KEY, BACKEND_KEY):
        assert secret not in everything
        # auditlog's stock mask keeps half of the value in clear; ours must keep none.
        assert secret[len(secret) // 2 :] not in everything
    update = entries(Bot, bot.pk)[-1]
    assert update.changes_dict["app_secret"] == ["********", "********"]


def test_user_and_otp_device_changes_are_audited_without_secrets(console, staff_user):
    post(
        console,
        "/admin/auth/user/add/",
        {"username": "bob", "password1": PASSWORD, "password2": PASSWORD, "usable_password": "true"},
    )
    bob = User.objects.get(username="bob")
    created = entries(User, bob.pk)[0]
    assert created.actor == staff_user and created.remote_addr == ADMIN_IP
    assert bob.password not in str(created.changes)

    with set_actor(staff_user, remote_addr=ADMIN_IP):
        device = AuthenticatorDevice.objects.create(user=bob, name="phone", confirmed=True)
    entry = entries(AuthenticatorDevice, device.pk)[0]
    assert entry.actor == staff_user
    assert device.key not in str(entry.changes) and entry.changes_dict["key"][1] == "********"


def test_sign_in_activity_is_recorded(client, staff_user, totp_device):
    client.post("/admin/2fa/login/", {"username": "alice", "password": "wrong"}, REMOTE_ADDR=ADMIN_IP)
    failed = AuthEvent.objects.get(kind=AuthEventKind.LOGIN_FAILED)
    assert (failed.username, failed.remote_addr) == ("alice", ADMIN_IP)

    client.post("/admin/2fa/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR=ADMIN_IP)
    client.post(
        "/admin/2fa/verify/",
        {"code": "000000" if fresh_code(totp_device) != "000000" else "111111"},
        REMOTE_ADDR=ADMIN_IP,
    )
    assert AuthEvent.objects.filter(kind=AuthEventKind.OTP_FAILED, user=staff_user).exists()

    # django-otp throttles a device for a while after a wrong code; that is not under test here.
    totp_device.refresh_from_db()
    totp_device.throttle_reset()
    sign_in(client, "alice", totp_device, REMOTE_ADDR=ADMIN_IP)
    login = AuthEvent.objects.get(kind=AuthEventKind.LOGIN)
    assert (login.user, login.remote_addr) == (staff_user, ADMIN_IP)

    client.post("/admin/logout/", REMOTE_ADDR=ADMIN_IP)
    assert AuthEvent.objects.filter(kind=AuthEventKind.LOGOUT, user=staff_user).exists()


def test_audit_log_is_read_only_in_the_console(console):
    post(console, "/admin/bots/adminaccessrule/add/", {"cidr": "192.0.2.0/24", "description": "", "enabled": "on"})
    entry = LogEntry.objects.latest("id")
    assert console.get("/admin/auditlog/logentry/").status_code == 200
    assert console.get(f"/admin/auditlog/logentry/{entry.pk}/change/").status_code == 200
    assert console.post(f"/admin/auditlog/logentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert console.get("/admin/auditlog/logentry/add/").status_code == 403
    assert console.get("/admin/audit/authevent/add/").status_code == 403
    assert LogEntry.objects.filter(pk=entry.pk).exists()
