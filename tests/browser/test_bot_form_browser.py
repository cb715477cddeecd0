"""The bot form in a real headless Chromium: the secrets an admin typed survive a
validation error, the bot saved after the fix has them (read back by decrypting its
columns in the database), and the callback URL the console shows answers WeCom's
signed URL check."""

from __future__ import annotations

import base64
import os
import secrets
import time
from urllib.parse import urlencode

import httpx
import pytest
from django.db import connection
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from bots import encryption
from bots.models import Bot
from bots.otp_devices import AuthenticatorDevice
from channels_app.crypto import WXBizMsgCrypt, signature
from tests.browser.conftest import browser_sign_in, click_and_wait, wait_for
from tests.fixtures import PASSWORD

pytestmark = pytest.mark.browser

CORP_ID = "ww5823bf96d3bd56c7"
TYPED = {
    "app_secret": f"corp-secret-{secrets.token_hex(6)}",
    "token": f"tok{secrets.token_hex(6)}",
    "encoding_aes_key": base64.b64encode(os.urandom(32)).decode()[:43],
}


@pytest.fixture
def admin_user(django_user_model):
    user = django_user_model.objects.create_superuser(username="root", email="root@example.com", password=PASSWORD)
    return user, AuthenticatorDevice.objects.create(user=user, name="phone", confirmed=True)


def fill(browser, field_id: str, value: str) -> None:
    element = browser.find_element(By.ID, field_id)
    element.clear()
    element.send_keys(value)


def stored_in_clear(bot: Bot, column: str) -> str:
    """The column as the database holds it, decrypted here: what a restore would give back."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM bots_bot WHERE id = %s", [bot.pk])  # noqa: S608
        raw = cursor.fetchone()[0]
    assert raw and TYPED[column] not in raw
    return encryption.decrypt(raw, f"bots.Bot.{column}")


def wecom_url_check(url: str, token: str, encoding_aes_key: str) -> httpx.Response:
    """The GET WeCom sends when an admin saves the callback URL in its console."""
    echo = f"echo-{secrets.token_hex(4)}"
    echostr = WXBizMsgCrypt(encoding_aes_key, CORP_ID).encrypt(echo)
    timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**9))
    query = urlencode(
        {
            "msg_signature": signature(token, timestamp, nonce, echostr),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr,
        }
    )
    response = httpx.get(f"{url}?{query}", timeout=20)
    assert response.text == echo, response.text[:300]
    return response


def test_secrets_survive_a_validation_error_and_the_saved_bot_answers_its_callback(
    browser, live_server, admin_user, shot
):
    _, device = admin_user
    browser_sign_in(browser, live_server.url, "root", device)

    browser.get(f"{live_server.url}/admin/bots/bot/add/")
    wait_for(browser, "#bot_form")
    # Nothing is shown that the saved bot would not get.
    assert browser.find_element(By.CSS_SELECTOR, ".field-bot_uuid .readonly").text == "assigned when saved"
    fill(browser, "id_name", "helpdesk")
    Select(browser.find_element(By.ID, "id_platform")).select_by_value("wecom")
    fill(browser, "id_app_id", CORP_ID)
    for name, value in TYPED.items():
        fill(browser, f"id_{name}", value)
    fill(browser, "id_extra", "{}")  # WeCom's agent_id forgotten
    shot("bot-add-form")
    click_and_wait(browser, browser.find_element(By.NAME, "_save"))

    assert "agent_id is required for wecom" in wait_for(browser, ".field-extra .errorlist").text
    assert not Bot.objects.exists()
    for name, value in TYPED.items():
        secret_input = browser.find_element(By.ID, f"id_{name}")
        assert secret_input.get_attribute("type") == "password"
        assert secret_input.get_property("value") == value, name
    shot("bot-add-form-error-secrets-kept")

    fill(browser, "id_extra", '{"agent_id": 1000002}')
    click_and_wait(browser, browser.find_element(By.NAME, "_save"))
    assert browser.current_url == f"{live_server.url}/admin/bots/bot/"
    assert "was added successfully" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    shot("bot-list")

    bot = Bot.objects.get(name="helpdesk")
    assert {name: stored_in_clear(bot, name) for name in TYPED} == TYPED

    browser.get(f"{live_server.url}/admin/bots/bot/{bot.pk}/change/")
    callback_path = wait_for(browser, ".field-callback_url code").text
    assert browser.find_element(By.CSS_SELECTOR, ".field-bot_uuid .readonly").text == str(bot.uuid)
    for name in TYPED:
        assert browser.find_element(By.ID, f"id_{name}").get_property("value") == ""
    assert not any(value in browser.page_source for value in TYPED.values())
    shot("bot-page")

    answered = wecom_url_check(f"{live_server.url}{callback_path}", TYPED["token"], TYPED["encoding_aes_key"])
    assert answered.status_code == 200
