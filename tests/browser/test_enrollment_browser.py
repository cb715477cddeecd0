"""First sign-in of a new superuser in a real browser: password, enrollment by manual key,
backup codes, then the console."""

from __future__ import annotations

from base64 import b32decode

import pytest
from django_otp.oath import TOTP
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from bots.otp_devices import AuthenticatorDevice
from tests.browser.conftest import click_and_wait
from tests.conftest import PASSWORD


def code_for(manual_key: str) -> str:
    """What an authenticator app shows for a key typed in by hand (30 s steps, 6 digits)."""
    return f"{TOTP(b32decode(manual_key.replace(' ', ''))).token():06d}"


@pytest.mark.browser
def test_new_superuser_enrolls_and_reaches_the_console(browser, live_server, django_user_model, shot):
    django_user_model.objects.create_superuser(username="root", email="root@example.com", password=PASSWORD)
    wait = WebDriverWait(browser, 10)

    browser.get(f"{live_server.url}/admin/")
    wait.until(ec.presence_of_element_located((By.ID, "login-form")))
    assert "/admin/2fa/login/" in browser.current_url
    shot("password")
    browser.find_element(By.ID, "id_username").send_keys("root")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form input[type=submit]").click()

    key_element = wait.until(ec.visibility_of_element_located((By.ID, "manual-key")))
    assert "/admin/2fa/enroll/" in browser.current_url
    qr = browser.find_element(By.CSS_SELECTOR, ".sb-qr svg")
    assert qr.is_displayed() and qr.size["width"] >= 200 and qr.size["height"] >= 200
    shot("enroll-qr-code")

    manual_key = key_element.text
    device = AuthenticatorDevice.objects.get(user__username="root")
    assert b32decode(manual_key.replace(" ", "")) == device.bin_key
    browser.find_element(By.ID, "id_code").send_keys(code_for(manual_key))
    browser.find_element(By.CSS_SELECTOR, "#enroll-form input[type=submit]").click()

    codes = wait.until(ec.visibility_of_element_located((By.ID, "backup-codes")))
    assert len(codes.find_elements(By.TAG_NAME, "li")) == 10
    shot("backup-codes")
    device.refresh_from_db()
    assert device.confirmed
    # The backup-codes page has #site-name too: wait for it to be replaced first.
    click_and_wait(browser, browser.find_element(By.ID, "continue"))
    wait.until(ec.presence_of_element_located((By.ID, "site-name")))
    assert browser.current_url == f"{live_server.url}/admin/"
    assert browser.find_element(By.ID, "site-name").text == "Switchboard console"
    assert browser.find_element(By.CSS_SELECTOR, "#content h1").text == "Bots, models and routing"
    assert browser.find_elements(By.CSS_SELECTOR, "a[href='/admin/bots/bot/']"), "the index lists no bots link"
    shot("console-index")
