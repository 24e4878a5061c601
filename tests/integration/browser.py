"""A real headless Chromium for the browser tests, driven by Selenium through chromedriver.

Debian's ``chromium`` and ``chromium-driver`` (scripts/test.sh installs them when absent and it
runs as root); without them the browser tests skip, saying so. Selenium is pointed at both
binaries, so it never looks for (or downloads) a browser or driver of its own.

This module holds no tests; ``tests/integration/conftest.py`` turns it into the ``browser``
fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM_ENV = "CALLSPAN_CHROMIUM"  # override the browser binary
CHROMEDRIVER_ENV = "CALLSPAN_CHROMEDRIVER"
INSTALL_HINT = "install Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
T = TypeVar("T")


def find_tools() -> tuple[str, str] | None:
    chromium = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get(CHROMEDRIVER_ENV) or shutil.which("chromedriver")
    if not chromium or not driver:
        return None
    return chromium, driver


class Browser:
    """One Chromium session; collects console messages and network requests as it goes."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self._requests: list[str] = []

    def get(self, url: str) -> None:
        self.driver.get(url)

    def offline(self) -> None:
        """From now on, every network request fails (file: and data: URLs still load)."""
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})

    def console(self) -> list[dict[str, Any]]:
        """Console messages and uncaught exceptions since the last call."""
        return list(self.driver.get_log("browser"))

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.console() if entry.get("level") == "SEVERE"]

    def requested_urls(self) -> list[str]:
        """URLs the page asked for since the last call (from Chromium's performance log)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self._requests.append(message["params"]["request"]["url"])
        out, self._requests = self._requests, []
        return out

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``probe`` until it returns something truthy; fail the test after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = probe()
            except Exception as exc:  # a stale element while the page re-renders: try again
                value = None
                last = exc
            else:
                last = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                                     + (f" (last error: {last})" if last else ""))
            time.sleep(0.1)

    def screenshot(self, path: Path, width: int, height: int) -> None:
        """A PNG of the viewport at ``width`` x ``height`` CSS pixels."""
        self.driver.set_window_size(width, height)
        # The window includes no browser chrome in headless mode; let the layout settle.
        time.sleep(0.3)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Browser]:
    """A headless Chromium, or skip when chromium/chromedriver/selenium are missing."""
    tools = find_tools()
    if tools is None:
        pytest.skip(f"no chromium/chromedriver on PATH: {INSTALL_HINT}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = tools[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=tools[1]))
    try:
        driver.set_page_load_timeout(60)
        yield Browser(driver)
    finally:
        driver.quit()
