"""Headless Chromium for the browser tests: Debian's chromium and chromedriver, driven by Selenium.

.ci/run installs both. Run by hand on a machine without them, the fixture installs them if it can (as root,
with apt-get); otherwise the tests fail, saying what to install. They never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

# The machine's Chromium: no sandbox (containers), no GPU, nothing fetched in the background.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000"]
PACKAGES = ["chromium", "chromium-driver"]
SHARED_SCREENSHOTS = Path("/tmp/pacspace-screenshots")
WAIT = 20.0  # seconds: a bound for a hung page, not a measurement


def binaries() -> tuple[str, str]:
    """Chromium and its driver, installed now if missing and possible; the test fails otherwise."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if None in found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=600, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], env=env, timeout=900, check=False)
        found = shutil.which("chromium"), shutil.which("chromedriver")
    if None in found:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: apt-get install "
                    f"{' '.join(PACKAGES)} (as root; .ci/run does this)")
    return found  # type: ignore[return-value]


def start_browser() -> tuple[webdriver.Chrome, str]:
    chromium, driver = binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="pacspace-chromium-")
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(WAIT)
    browser.set_script_timeout(WAIT)
    return browser, profile


def wait_for(browser: webdriver.Chrome, condition, message: str):  # type: ignore[no-untyped-def]
    """``condition(browser)`` once it is truthy; a page that reloads meanwhile is looked at again."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, WAIT, poll_frequency=0.1, ignored_exceptions=ignored).until(condition, message)


def reloaded(browser: webdriver.Chrome, act) -> None:  # type: ignore[no-untyped-def]
    """Do ``act()`` and wait until the page it leads to (a reload, a navigation) has loaded."""
    browser.execute_script("document.documentElement.dataset.old = 'yes'")
    act()
    wait_for(browser, lambda b: b.execute_script(
        "return !document.documentElement.dataset.old && document.readyState === 'complete'"), "no new page")


class Screenshots:
    """Full-page screenshots: under the test run's tmp path, and a copy under /tmp/pacspace-screenshots."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        SHARED_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, browser: webdriver.Chrome, name: str) -> Path:
        import base64

        metrics = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics["cssContentSize"]
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1}})
        path = self.folder / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        shutil.copy(path, SHARED_SCREENSHOTS / path.name)
        self.taken.append(path)
        return path
