"""The console in a real headless Chromium, signed in with real TOTP codes: bots and the
audit trail, step-up before a secret is revealed, API keys, the auditor's export, the
test tools, and replaying a failed message from the delivery log. Every page visited
is saved as a screenshot (see conftest.shot)."""

from __future__ import annotations

import base64
import io
import os
import secrets
import time
from datetime import timedelta

import httpx
import pytest
from auditlog.models import LogEntry
from django.contrib.sessions.backends.db import SessionStore
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from audit.export import verify_export
from audit.models import AuthEvent, AuthEventKind
from audit.roles import auditors_group
from bots.models import ApiKey, Bot
from bots.otp_devices import AuthenticatorDevice
from bots.stepup import FRESH_SECONDS, VERIFIED_AT_KEY
from channels_app.models import InboundMessage, MessageStatus
from routing.models import ModelBackend
from tests.browser.conftest import browser_sign_in, click_and_wait, wait_for
from tests.e2e.conftest import CeleryWorker
from tests.fakes.model import FakeModel
from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET, FakeWeCom
from tests.fixtures import PASSWORD, fresh_code

pytestmark = pytest.mark.browser

BOT_SECRET = "corp-secret-from-the-browser-7f3a"


@pytest.fixture
def admin_user(django_user_model):
    user = django_user_model.objects.create_superuser(username="root", email="root@example.com", password=PASSWORD)
    return user, AuthenticatorDevice.objects.create(user=user, name="phone", confirmed=True)


def aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()[:43]


def fill(browser, field_id: str, value: str) -> None:
    element = browser.find_element(By.ID, field_id)
    element.clear()
    element.send_keys(value)


def run_action(browser, action: str, *pks: int) -> None:
    for pk in pks:
        browser.find_element(By.CSS_SELECTOR, f"input.action-select[value='{pk}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value(action)
    click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "button[name=index]"))


def age_the_code(browser, seconds: float) -> None:
    """As if the browser's last code had been typed `seconds` ago."""
    session = SessionStore(session_key=browser.get_cookie("sessionid")["value"])
    session[VERIFIED_AT_KEY] = time.time() - seconds
    session.save()


def test_a_bot_created_in_the_console_is_in_the_audit_log_with_its_secret_masked(
    browser, live_server, admin_user, shot
):
    user, device = admin_user
    browser_sign_in(browser, live_server.url, "root", device)
    shot("console-index")

    browser.get(f"{live_server.url}/admin/bots/bot/add/")
    wait_for(browser, "#bot_form")
    fill(browser, "id_name", "helpdesk")
    Select(browser.find_element(By.ID, "id_platform")).select_by_value("wecom")
    fill(browser, "id_app_id", DEFAULT_CORP_ID)
    fill(browser, "id_app_secret", BOT_SECRET)
    fill(browser, "id_token", "callback-token-1")
    fill(browser, "id_encoding_aes_key", aes_key())
    fill(browser, "id_extra", '{"agent_id": 1000002}')
    shot("bot-add-form")
    click_and_wait(browser, browser.find_element(By.NAME, "_save"))
    assert browser.current_url == f"{live_server.url}/admin/bots/bot/"
    assert "helpdesk" in browser.find_element(By.ID, "result_list").text
    shot("bot-list")
    bot = Bot.objects.get(name="helpdesk")
    assert bot.app_secret == BOT_SECRET

    browser.get(f"{live_server.url}/admin/auditlog/logentry/")
    rows = browser.find_element(By.ID, "result_list").text
    assert "helpdesk" in rows and "root" in rows
    assert BOT_SECRET not in browser.page_source
    shot("audit-log")
    entry = LogEntry.objects.get(content_type__model="bot", object_pk=str(bot.pk))
    browser.get(f"{live_server.url}/admin/auditlog/logentry/{entry.pk}/change/")
    changes = wait_for(browser, ".field-msg").text
    assert "app_secret" in changes.lower().replace(" ", "_") or "App secret" in changes
    assert "********" in changes
    assert BOT_SECRET not in browser.page_source and BOT_SECRET[len(BOT_SECRET) // 2 :] not in browser.page_source
    shot("audit-entry-secret-masked")


def test_a_secret_is_revealed_only_after_a_fresh_code(browser, live_server, admin_user, make_bot, shot):
    user, device = admin_user
    bot = make_bot(
        name="helpdesk", app_id=DEFAULT_CORP_ID, app_secret=BOT_SECRET, token="tok-1", encoding_aes_key=aes_key()
    )
    browser_sign_in(browser, live_server.url, "root", device)
    age_the_code(browser, FRESH_SECONDS + 60)

    browser.get(f"{live_server.url}/admin/bots/bot/{bot.pk}/change/")
    assert "You will be asked for one first." in wait_for(browser, "#step-up-note").text
    assert BOT_SECRET not in browser.page_source
    shot("bot-page")
    click_and_wait(browser, browser.find_element(By.ID, "tool-reveal"))
    assert "/admin/2fa/step-up/" in browser.current_url
    assert browser.find_element(By.ID, "step-up-reason").text == "reveal a secret of bot helpdesk"
    assert BOT_SECRET not in browser.page_source
    assert not AuthEvent.objects.filter(kind=AuthEventKind.SECRET_REVEALED).exists()
    shot("step-up")

    fill(browser, "id_code", fresh_code(device))
    click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "#step-up-form input[type=submit]"))
    assert browser.current_url == f"{live_server.url}/admin/bots/bot/{bot.pk}/reveal/"
    assert BOT_SECRET not in browser.page_source
    shot("reveal-choice")
    click_and_wait(browser, browser.find_element(By.ID, "reveal-app_secret"))
    assert browser.find_element(By.ID, "revealed-secret").text == BOT_SECRET
    shot("secret-revealed")
    assert AuthEvent.objects.filter(kind=AuthEventKind.STEP_UP, user=user).count() == 1
    [revealed] = AuthEvent.objects.filter(kind=AuthEventKind.SECRET_REVEALED)
    assert revealed.user == user and revealed.detail.endswith(": app_secret")


def call_chat(base_url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/api/v1/chat",
        headers={"Authorization": f"Api-Key {key}"},
        json={"bot": "helpdesk", "text": "hello", "user": "u-1"},
        timeout=20,
    )


def test_an_api_key_is_shown_once_works_and_is_rotated(browser, live_server, admin_user, make_bot, shot):
    user, device = admin_user
    make_bot(name="helpdesk", default_backend=ModelBackend.objects.create(name="echo", kind="echo"))
    browser_sign_in(browser, live_server.url, "root", device)

    browser.get(f"{live_server.url}/admin/bots/apikey/add/")
    wait_for(browser, "#apikey_form")
    fill(browser, "id_name", "crm")
    browser.find_element(By.CSS_SELECTOR, "input[name=scopes][value=chat]").click()
    shot("api-key-add")
    click_and_wait(browser, browser.find_element(By.NAME, "_save"))
    shown = browser.find_element(By.CSS_SELECTOR, "code.sb-new-key")
    key = shown.text
    assert key.startswith(f"sb_{shown.get_attribute('data-prefix')}_")
    shot("api-key-shown-once")
    browser.refresh()
    assert not browser.find_elements(By.CSS_SELECTOR, "code.sb-new-key")
    assert key not in browser.page_source
    shot("api-key-list")

    answered = call_chat(live_server.url, key)
    assert answered.status_code == 200, answered.text
    assert answered.json()["answer"] == "echo: hello" and answered.json()["backend"] == "echo"

    old = ApiKey.objects.get(name="crm")
    run_action(browser, "rotate_keys", old.pk)
    assert "/admin/2fa/" not in browser.current_url  # the sign-in code is still fresh
    new_key = browser.find_element(By.CSS_SELECTOR, "code.sb-new-key").text
    assert new_key != key
    shot("api-key-rotated")
    assert call_chat(live_server.url, new_key).status_code == 200
    assert call_chat(live_server.url, key).status_code == 200  # the grace period
    old.refresh_from_db()
    assert old.expires_at <= timezone.now() + timedelta(hours=24)

    # The grace period ends (moved into the past rather than waited for): the old key stops.
    ApiKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = call_chat(live_server.url, key)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "key_expired"
    assert call_chat(live_server.url, new_key).status_code == 200
    browser.refresh()
    shot("api-key-old-expired")


def test_an_auditor_exports_csv_and_cannot_open_a_bot(
    browser, live_server, django_user_model, make_bot, downloads, shot, admin_user
):
    bot = make_bot(name="helpdesk")
    auditor = django_user_model.objects.create_user(username="audrey", password=PASSWORD, is_staff=True)
    auditor.groups.add(auditors_group())
    device = AuthenticatorDevice.objects.create(user=auditor, name="phone", confirmed=True)
    browser_sign_in(browser, live_server.url, "audrey", device)
    shot("auditor-index")
    links = {
        a.get_attribute("href").removeprefix(live_server.url)
        for a in browser.find_elements(By.CSS_SELECTOR, "#content-main a")
        if a.get_attribute("href")
    }
    assert "/admin/bots/bot/" not in links and "/admin/auditlog/logentry/" in links

    browser.get(f"{live_server.url}/admin/auditlog/logentry/")
    shot("auditor-audit-log")
    click_and_wait(browser, browser.find_element(By.ID, "export-csv"))
    shot("auditor-export-form")
    browser.find_element(By.ID, "export-download").click()
    WebDriverWait(browser, 15).until(lambda _: [p for p in downloads.iterdir() if p.suffix == ".csv"])
    [exported] = [p for p in downloads.iterdir() if p.suffix == ".csv"]
    result = verify_export(io.StringIO(exported.read_text()))
    assert result.ok, result.message
    assert AuthEvent.objects.filter(kind=AuthEventKind.AUDIT_EXPORTED, user=auditor).count() == 1

    browser.get(f"{live_server.url}/admin/bots/bot/{bot.pk}/change/")
    assert wait_for(browser, "#forbidden").text == "403 — not for this account"
    assert "helpdesk" not in browser.page_source
    shot("auditor-refused-bot-page")


def test_the_test_tools_on_a_bot_page(browser, live_server, admin_user, make_bot, shot):
    user, device = admin_user
    bot = make_bot(
        name="helpdesk",
        app_id=DEFAULT_CORP_ID,
        app_secret="s",
        token=secrets.token_hex(8),
        encoding_aes_key=aes_key(),
        default_backend=ModelBackend.objects.create(name="echo", kind="echo"),
    )
    browser_sign_in(browser, live_server.url, "root", device)
    browser.get(f"{live_server.url}/admin/bots/bot/{bot.pk}/change/")
    click_and_wait(browser, "#tool-test-message")
    fill(browser, "id_text", "hello there")
    click_and_wait(browser, "#test-message-form input[type=submit]")
    assert browser.find_element(By.ID, "test-answer").text == "echo: hello there"
    assert browser.find_element(By.ID, "test-route").text == "the bot's default backend"
    shot("test-message")

    browser.get(f"{live_server.url}/admin/bots/bot/{bot.pk}/check-callback/")
    click_and_wait(browser, "#check-callback-form input[type=submit]")
    assert browser.find_element(By.ID, "check-summary").text == "The callback setup works."
    shot("callback-check-ok")
    Bot.objects.filter(pk=bot.pk).update(token="")
    browser.refresh()  # re-submits the check form
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "check-summary").text == "The callback setup has problems."
    )
    assert "Token is empty" in browser.find_element(By.ID, "check-findings").text
    shot("callback-check-problem")


@pytest.mark.slow
def test_a_failed_message_is_replayed_from_the_delivery_log(browser, live_server, admin_user, shot):
    user, device = admin_user
    with FakeWeCom() as wecom, FakeModel() as model, CeleryWorker(concurrency=1):
        backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
        bot = Bot.objects.create(
            name="helpdesk",
            platform="wecom",
            app_id=DEFAULT_CORP_ID,
            app_secret=DEFAULT_CORP_SECRET,
            token="tok-1",
            encoding_aes_key=aes_key(),
            api_base_url=wecom.url,
            extra={"agent_id": 1000002},
            default_backend=backend,
        )
        failed = InboundMessage.objects.create(
            bot=bot,
            platform_message_id="4711",
            chat_id="zhangsan",
            sender_id="zhangsan",
            chat_type="p2p",
            text="where is my invoice?",
            mentioned=True,
            status=MessageStatus.FAILED,
            attempts=4,
            error="model: fake-model answered HTTP 503 after 3 attempts",
            raw={"reply_context": {"touser": "zhangsan", "agent_id": "1000002"}},
        )
        browser_sign_in(browser, live_server.url, "root", device)
        browser.get(f"{live_server.url}/admin/channels_app/inboundmessage/?status__exact=failed")
        assert "model: fake-model answered HTTP 503" in wait_for(browser, "#result_list").text
        shot("delivery-log-failed")
        browser.get(f"{live_server.url}/admin/channels_app/inboundmessage/{failed.pk}/change/")
        shot("delivery-log-message")
        browser.get(f"{live_server.url}/admin/channels_app/inboundmessage/?status__exact=failed")
        run_action(browser, "replay_messages", failed.pk)
        assert (
            "Replaying 1 message: queued for the worker." in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
        )
        [sent] = wecom.wait_for(r"/message/send", 1)
        assert sent.json()["text"]["content"] == "[m1] where is my invoice? (history=0)"
        deadline = time.monotonic() + 20
        while InboundMessage.objects.get(pk=failed.pk).status != MessageStatus.REPLIED:
            assert time.monotonic() < deadline, "the replayed message was not marked replied"
            time.sleep(0.1)
        browser.get(f"{live_server.url}/admin/channels_app/inboundmessage/")
        assert "replied" in wait_for(browser, "#result_list").text
        shot("delivery-log-replied")
    failed.refresh_from_db()
    assert failed.error == "" and failed.reply_text == "[m1] where is my invoice? (history=0)"
    assert failed.attempts == 5
    entry = LogEntry.objects.get(content_type__model="inboundmessage", object_pk=str(failed.pk))
    assert entry.actor == user and entry.additional_data == {"console_action": "replay"}
