"""Step-up: revealing or changing a secret, API keys, admin access rules and deleting a
bot need a code from the last five minutes; without one the admin is asked for a fresh
code and brought back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.utils import timezone

from audit.models import AuthEvent, AuthEventKind
from bots.models import AdminAccessRule, ApiKey, Bot
from bots.stepup import FRESH_SECONDS
from routing.models import ModelBackend
from tests.console.conftest import STEP_UP, code_age, make_stale, sent_to_step_up, wait_out_throttle
from tests.fixtures import fresh_code, give_backup_codes
from tests.test_audit_trail import BOT_AES_KEY, bot_form

SECRET = "app-secret-0123456789"


@pytest.fixture
def bot(make_bot) -> Bot:
    return make_bot(
        name="helpdesk", app_id="ww0001", app_secret=SECRET, token="tok-123456", encoding_aes_key=BOT_AES_KEY
    )


def reveal_url(bot: Bot) -> str:
    return f"/admin/bots/bot/{bot.pk}/reveal/"


def events(kind: str) -> list[AuthEvent]:
    return list(AuthEvent.objects.filter(kind=kind).order_by("id"))


def step_up(client, device, next_url: str):
    return client.post(STEP_UP, {"code": fresh_code(device), "next": next_url})


def change_form(bot: Bot, **changes) -> dict:
    return bot_form(
        bot.name,
        **{"app_id": bot.app_id, "app_secret": "", "token": "", "encoding_aes_key": "", "allowed_ips": "[]", **changes},
    )


# -- revealing a secret ------------------------------------------------------------------


def test_a_fresh_sign_in_may_reveal_a_secret_and_the_reveal_is_audited(console, staff_user, bot):
    page = console.get(reveal_url(bot))
    assert page.status_code == 200
    assert SECRET not in page.content.decode()  # the choice page never holds the value

    response = console.post(reveal_url(bot), {"field": "app_secret"}, REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 200
    assert f'id="revealed-secret">{SECRET}</code>' in response.content.decode()
    assert response["Cache-Control"].startswith("max-age=0") and "no-store" in response["Cache-Control"]
    [event] = events(AuthEventKind.SECRET_REVEALED)
    assert event.user == staff_user and event.remote_addr == "10.1.2.3"
    assert event.detail == f"bot helpdesk (id {bot.pk}): app_secret"
    assert SECRET not in event.detail

    assert SECRET not in console.get(reveal_url(bot)).content.decode()


def test_revealing_with_an_old_code_asks_for_a_fresh_one_first(stale_console, staff_user, totp_device, bot):
    assert sent_to_step_up(stale_console.get(reveal_url(bot)), reveal_url(bot))
    response = stale_console.post(reveal_url(bot), {"field": "app_secret"})
    assert sent_to_step_up(response, reveal_url(bot))
    assert SECRET not in response.content.decode()
    assert not events(AuthEventKind.SECRET_REVEALED)

    page = stale_console.get(f"{STEP_UP}?next={reveal_url(bot)}")
    assert page.status_code == 200
    assert 'id="step-up-reason">reveal a secret of bot helpdesk</strong>' in page.content.decode()

    response = step_up(stale_console, totp_device, reveal_url(bot))
    assert response.status_code == 302 and response["Location"] == reveal_url(bot)
    [confirmed] = events(AuthEventKind.STEP_UP)
    assert confirmed.user == staff_user and confirmed.detail == "to reveal a secret of bot helpdesk"

    response = stale_console.post(reveal_url(bot), {"field": "app_secret"})
    assert SECRET in response.content.decode()
    assert len(events(AuthEventKind.SECRET_REVEALED)) == 1


@pytest.mark.parametrize(("age", "fresh"), [(FRESH_SECONDS - 5, True), (FRESH_SECONDS + 5, False)])
def test_a_code_counts_as_fresh_for_five_minutes(console, bot, age, fresh):
    code_age(console, age)
    response = console.get(reveal_url(bot))
    assert (response.status_code == 200) is fresh
    assert sent_to_step_up(response, reveal_url(bot)) is not fresh


def test_a_wrong_step_up_code_is_refused_and_audited(stale_console, staff_user, totp_device, bot):
    response = stale_console.post(
        STEP_UP, {"code": "000000" if fresh_code(totp_device) != "000000" else "111111", "next": reveal_url(bot)}
    )
    assert response.status_code == 200
    assert b"That code is not valid" in response.content
    [failed] = events(AuthEventKind.STEP_UP_FAILED)
    assert failed.user == staff_user
    assert not events(AuthEventKind.STEP_UP)
    assert sent_to_step_up(stale_console.get(reveal_url(bot)), reveal_url(bot))


def test_step_up_does_not_follow_an_offsite_next(stale_console, totp_device):
    response = step_up(stale_console, totp_device, "https://evil.example/")
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_step_up_needs_a_signed_in_console_user(client, staff_user, totp_device):
    response = client.post(STEP_UP, {"code": fresh_code(totp_device)})
    assert response.status_code == 302 and response["Location"].startswith("/admin/2fa/login/")
    assert not events(AuthEventKind.STEP_UP)
    # A password-only session (no second factor at all) is no better.
    client.force_login(staff_user)
    response = client.post(STEP_UP, {"code": fresh_code(totp_device)})
    assert response["Location"].startswith("/admin/2fa/login/")


def test_a_backup_code_works_for_step_up(stale_console, staff_user, bot):
    give_backup_codes(staff_user, "c0ffee42")
    response = stale_console.post(STEP_UP, {"code": "c0ffee42", "next": reveal_url(bot)})
    assert response["Location"] == reveal_url(bot)
    assert stale_console.get(reveal_url(bot)).status_code == 200


def test_repeated_wrong_step_up_codes_end_the_session(stale_console, staff_user, totp_device, bot, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    wrong = "000000" if fresh_code(totp_device) != "000000" else "111111"
    for _ in range(2):
        assert stale_console.post(STEP_UP, {"code": wrong}).status_code == 200
        wait_out_throttle(totp_device)
    response = stale_console.post(STEP_UP, {"code": wrong})
    assert response.status_code == 302 and response["Location"].startswith("/admin/2fa/login/")
    assert len(events(AuthEventKind.STEP_UP_FAILED)) == 3
    [locked] = events(AuthEventKind.LOCKED_OUT)
    assert locked.user == staff_user and "step-up code" in locked.detail
    # The stolen (or unattended) session is gone, not just refused this once.
    assert stale_console.get("/admin/").status_code == 302
    login_page = stale_console.get(response["Location"])
    assert b"Too many failed attempts for this account from your address" in login_page.content


# -- changing a secret -------------------------------------------------------------------


def test_changing_a_bot_secret_with_an_old_code_saves_nothing_and_says_so(stale_console, totp_device, bot):
    change = f"/admin/bots/bot/{bot.pk}/change/"
    response = stale_console.post(change, change_form(bot, app_secret="new-secret-42", system_prompt="be kind"))
    assert sent_to_step_up(response, change)
    bot.refresh_from_db()
    assert bot.app_secret == SECRET and bot.system_prompt == ""
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert message.startswith("Nothing was saved yet: to change a secret you need a fresh code")
    assert "then submit again" in message

    response = step_up(stale_console, totp_device, change)
    assert response["Location"] == change
    assert stale_console.get(change).status_code == 200
    response = stale_console.post(change, change_form(bot, app_secret="new-secret-42"))
    assert response.status_code == 302 and response["Location"] == "/admin/bots/bot/"
    bot.refresh_from_db()
    assert bot.app_secret == "new-secret-42"


def test_other_bot_changes_need_no_fresh_code(stale_console, bot):
    # Blank secret fields keep the stored values; typing the stored value is no change either.
    response = stale_console.post(
        f"/admin/bots/bot/{bot.pk}/change/", change_form(bot, system_prompt="be kind", app_secret=SECRET)
    )
    assert response.status_code == 302 and response["Location"] == "/admin/bots/bot/"
    bot.refresh_from_db()
    assert bot.system_prompt == "be kind" and bot.app_secret == SECRET


def test_a_new_bot_needs_no_fresh_code(stale_console):
    response = stale_console.post("/admin/bots/bot/add/", bot_form("newbot"))
    assert response.status_code == 302
    assert Bot.objects.get(name="newbot").app_secret == bot_form("x")["app_secret"]


def test_changing_a_model_api_key_needs_a_fresh_code(stale_console):
    backend = ModelBackend.objects.create(
        name="gpt", kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key="sk-old"
    )
    change = f"/admin/routing/modelbackend/{backend.pk}/change/"
    form = {
        "name": "gpt",
        "kind": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        "api_key": "sk-new",
        "timeout": "30",
        "max_tokens": "",
        "enabled": "on",
    }
    assert sent_to_step_up(stale_console.post(change, form), change)
    backend.refresh_from_db()
    assert backend.api_key == "sk-old"
    response = stale_console.post(change, {**form, "api_key": "", "timeout": "12"})
    assert response.status_code == 302
    backend.refresh_from_db()
    assert backend.timeout == 12 and backend.api_key == "sk-old"


# -- deleting a bot ----------------------------------------------------------------------


def test_deleting_a_bot_needs_a_fresh_code(stale_console, totp_device, bot):
    delete = f"/admin/bots/bot/{bot.pk}/delete/"
    assert sent_to_step_up(stale_console.get(delete), delete)
    assert sent_to_step_up(stale_console.post(delete, {"post": "yes"}), delete)
    response = stale_console.post(
        "/admin/bots/bot/", {"action": "delete_selected", "_selected_action": [bot.pk], "post": "yes"}
    )
    assert sent_to_step_up(response, "/admin/bots/bot/")
    assert Bot.objects.filter(pk=bot.pk).exists()

    step_up(stale_console, totp_device, delete)
    assert stale_console.post(delete, {"post": "yes"}).status_code == 302
    assert not Bot.objects.filter(pk=bot.pk).exists()


# -- API keys and admin access rules ---------------------------------------------------------


def test_creating_or_rotating_an_api_key_needs_a_fresh_code(stale_console):
    add = "/admin/bots/apikey/add/"
    assert sent_to_step_up(stale_console.get(add), add)
    form = {
        "name": "crm",
        "scopes": ["chat"],
        "allowed_cidrs": "[]",
        "expires_at_0": "2030-01-01",
        "expires_at_1": "00:00:00",
    }
    assert sent_to_step_up(stale_console.post(add, form), add)
    assert not ApiKey.objects.exists()

    key, _ = ApiKey.issue(name="crm", scopes=["chat"])
    change = f"/admin/bots/apikey/{key.pk}/change/"
    assert sent_to_step_up(stale_console.post(change, {**form, "scopes": ["chat", "audit:read"]}), change)
    response = stale_console.post("/admin/bots/apikey/", {"action": "rotate_keys", "_selected_action": [key.pk]})
    assert sent_to_step_up(response, "/admin/bots/apikey/")
    key.refresh_from_db()
    assert key.scopes == ["chat"] and key.replaced_by is None and ApiKey.objects.count() == 1


def test_revoking_an_api_key_needs_no_fresh_code(stale_console):
    key, _ = ApiKey.issue(name="leaked", scopes=["chat"])
    response = stale_console.post("/admin/bots/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    assert response.status_code == 302 and response["Location"] == "/admin/bots/apikey/"
    key.refresh_from_db()
    assert key.revoked


def test_admin_access_rules_need_a_fresh_code(stale_console, totp_device):
    rule = AdminAccessRule.objects.create(cidr="198.51.100.0/24", description="vpn")
    pages = [
        "/admin/bots/adminaccessrule/add/",
        f"/admin/bots/adminaccessrule/{rule.pk}/change/",
        f"/admin/bots/adminaccessrule/{rule.pk}/delete/",
    ]
    for page in pages:
        assert sent_to_step_up(stale_console.get(page), page)
    assert sent_to_step_up(stale_console.post(pages[0], {"cidr": "0.0.0.0/0", "enabled": "on"}), pages[0])
    assert sent_to_step_up(stale_console.post(pages[1], {"cidr": "0.0.0.0/0", "enabled": "on"}), pages[1])
    assert sent_to_step_up(stale_console.post(pages[2], {"post": "yes"}), pages[2])
    assert list(AdminAccessRule.objects.values_list("cidr", flat=True)) == ["198.51.100.0/24"]

    step_up(stale_console, totp_device, pages[1])
    response = stale_console.post(pages[1], {"cidr": "198.51.100.0/25", "description": "vpn", "enabled": "on"})
    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.cidr == "198.51.100.0/25"


def test_the_bot_page_says_when_a_fresh_code_is_needed(console, bot):
    page = console.get(f"/admin/bots/bot/{bot.pk}/change/").content.decode()
    assert "Yours is fresh for" in page
    make_stale(console)
    page = console.get(f"/admin/bots/bot/{bot.pk}/change/").content.decode()
    assert "You will be asked for one first." in page


def test_a_sign_in_long_ago_is_not_fresh_even_if_the_session_lives_on(console, bot):
    session = console.session
    session["switchboard_otp_verified_at"] = (timezone.now() - timedelta(hours=2)).timestamp()
    session.save()
    assert sent_to_step_up(console.get(reveal_url(bot)), reveal_url(bot))
