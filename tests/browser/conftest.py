"""A headless Chromium driven by Selenium, for tests that need a real browser; screenshots
of the pages the tests visit (artifacts for a reviewer); signing in the way a person does."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.fixtures import PASSWORD, fresh_code

REPO_ROOT = Path(__file__).resolve().parents[2]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install -y chromium chromium-driver"

CHROMIUM_ARGUMENTS = [
    "--headless=new",
    "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    # No internet here: keep Chromium from reaching out and stalling on timeouts.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
]


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    """Where the browser saves downloads."""
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def browser(tmp_path: Path, downloads: Path) -> Iterator[webdriver.Chrome]:
    required = os.environ.get("SWITCHBOARD_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists():
        if required:
            pytest.fail(f"SWITCHBOARD_REQUIRE_BROWSER=1 but {CHROMIUM} is missing; {INSTALL_HINT}")
        pytest.skip(f"no headless Chromium at {CHROMIUM} ({INSTALL_HINT}; SWITCHBOARD_REQUIRE_BROWSER=1 fails instead)")
    if not CHROMEDRIVER.exists():
        # Without this check Selenium would call selenium-manager, which tries to download a driver.
        pytest.fail(f"{CHROMIUM} is installed but {CHROMEDRIVER} is not; {INSTALL_HINT}")

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in [*CHROMIUM_ARGUMENTS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    # The console log, to catch Content-Security-Policy violations on every page.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir() -> Path:
    """SWITCHBOARD_SCREENSHOTS, or var/screenshots in the repository."""
    path = Path(os.environ.get("SWITCHBOARD_SCREENSHOTS") or REPO_ROOT / "var" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def shot(browser, request) -> Callable[[str], Path]:
    """shot("bot-page"): save a screenshot of the current page as
    <dir>/<test>-<nn>-bot-page.png, and fail if the page broke the console's
    Content-Security-Policy (the policy is only useful if the console works under it)."""
    test = re.sub(r"[^\w-]+", "-", request.node.name.removeprefix("test_"))[:60]
    directory = screenshot_dir()
    for old in directory.glob(f"{test}-[0-9][0-9]-*.png"):
        old.unlink()
    count = 0

    def take(label: str) -> Path:
        nonlocal count
        count += 1
        path = directory / f"{test}-{count:02d}-{label}.png"
        # The whole page, not just the window: grow the window to the page's height.
        size = browser.get_window_size()
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(size["width"], min(max(height + 140, size["height"]), 5000))
        try:
            browser.save_screenshot(str(path))
        finally:
            browser.set_window_size(size["width"], size["height"])
        violations = [
            entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]
        ]
        assert not violations, f"{browser.current_url} broke the console's CSP: {violations}"
        return path

    return take


def wait_for(browser, css: str, timeout: float = 10):
    return WebDriverWait(browser, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def browser_sign_in(browser, base_url: str, username: str, device, next_path: str = "/admin/") -> None:
    """Password, then a code from the device, as a person types them."""
    browser.get(f"{base_url}{next_path}")
    wait_for(browser, "#login-form")
    browser.find_element(By.ID, "id_username").send_keys(username)
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "#login-form input[type=submit]"))
    wait_for(browser, "#verify-form")
    browser.find_element(By.ID, "id_code").send_keys(fresh_code(device))
    # The sign-in pages carry #site-name too: wait for the verify page to go first, or
    # the next browser.get() can overtake the code's POST and land on the sign-in again.
    click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "#verify-form input[type=submit]"))
    wait_for(browser, "#site-name")


def click_and_wait(browser, target) -> None:
    """Click something that loads a new page, and wait until it has. Given a CSS selector,
    the element is looked up again if the page replaced it between finding and clicking
    (Chromium then reports a node that "does not belong to the document")."""
    for attempt in range(3):
        element = wait_for(browser, target) if isinstance(target, str) else target
        try:
            element.click()
        except (StaleElementReferenceException, WebDriverException) as exc:
            replaced = isinstance(exc, StaleElementReferenceException) or "does not belong to the document" in str(exc)
            if not isinstance(target, str) or attempt == 2 or not replaced:
                raise
            continue
        WebDriverWait(browser, 10).until(lambda _, gone=element: _is_gone(gone))
        return


def _is_gone(element) -> bool:
    """ec.staleness_of, also for Chromium's other word for a replaced node: asked about
    an element while the new page replaces it, it may answer that the node "does not
    belong to the document" instead of reporting it stale."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False
