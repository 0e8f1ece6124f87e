"""Headless Chromium from Debian's packages, driven by Selenium through Debian's chromedriver."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require(*programs: str) -> None:
    """Skip with a reason where a program is missing; in CI (which installs them) fail instead."""
    missing = [p for p in programs if not (shutil.which(p) or os.path.exists(p))]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver default-jdk-headless " \
                 "libokhttp-java; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def chromium_driver():
    require(CHROMIUM, CHROMEDRIVER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1000,800", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def wait_for(predicate, timeout: float = 90):
    """Poll ``predicate`` (a page's state, say) until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def despite_rerenders(action, timeout: float = 30):
    """Run ``action`` (finds elements and uses them) until it gets through without the page replacing one of
    its elements under it, as a list the page reloads after an answer ends does; returns what it returns."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def attempt():
        try:
            return action() or True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    return wait_for(attempt, timeout)
