"""A headless Chromium driven by Selenium, for tests that need a real browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

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
    "--window-size=1280,1100",
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
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
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
