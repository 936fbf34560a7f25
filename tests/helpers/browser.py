"""Headless Chromium for the report's tests, benchmark and screenshot, driven by Selenium.

Chromium (Debian: ``apt-get install chromium chromium-driver``) starts with a fresh profile and
without background networking, so any request it makes comes from the page. ``Browser``
collects what the page asks the network for (from the performance log, Network domain) and
what it logs to the console.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["REQUIRE_BROWSER", "Browser", "browser_missing", "headless_chromium"]

REQUIRE_BROWSER = os.environ.get("HEATMAP_REQUIRE_BROWSER") == "1"
"""CI sets ``HEATMAP_REQUIRE_BROWSER=1``: a missing browser then fails the tests."""

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
)
# chrome: is the browser's own start page, loaded before any test page; pages from file://
# cannot request chrome: URLs.
_LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:")


def _executables() -> tuple[str | None, str | None]:
    browser = next((path for name in _BROWSERS if (path := shutil.which(name))), None)
    return browser, shutil.which("chromedriver")


def browser_missing() -> str | None:
    """Why no headless browser can run here, or ``None`` when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    browser, driver = _executables()
    if browser is None or driver is None:
        return "Chromium or chromedriver not found (Debian: apt-get install chromium "
        "chromium-driver)"
    return None


class Browser:
    """A Selenium Chrome driver plus what the page requested and logged.

    Attributes:
        driver: The ``selenium.webdriver.Chrome`` instance.
    """

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self._requests: list[str] = []

    def open(self, path: Path) -> None:
        """Loads a local file, forgetting the requests and log lines before it."""
        self.requests()
        self.console()
        self.driver.get(Path(path).resolve().as_uri())

    def requests(self) -> list[str]:
        """URLs requested since the last call (from the performance log)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self._requests.append(message["params"]["request"]["url"])
        found, self._requests = self._requests, []
        return found

    def remote_requests(self) -> list[str]:
        """Requested URLs that are not local files or inline data, since the last call."""
        return [url for url in self.requests() if not url.startswith(_LOCAL_SCHEMES)]

    def console(self) -> list[dict[str, Any]]:
        """Console entries (log lines, errors, failed loads) since the last call."""
        return self.driver.get_log("browser")

    def errors(self) -> list[str]:
        """Console errors (level ``SEVERE``) since the last call."""
        return [e["message"] for e in self.console() if e["level"] == "SEVERE"]


@contextmanager
def headless_chromium(
    width: int = 1400, height: int = 900, timeout_s: float = 20.0
) -> Iterator[Browser]:
    """Starts headless Chromium with a fresh profile; quits it on exit.

    Args:
        width: Window width in CSS pixels.
        height: Window height in CSS pixels.
        timeout_s: Page-load and script timeout, so that nothing waits forever.

    Yields:
        The browser.

    Raises:
        RuntimeError: When ``browser_missing()`` gives a reason.
    """
    reason = browser_missing()
    if reason:
        raise RuntimeError(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _executables()
    with tempfile.TemporaryDirectory(prefix="heatmap-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.set_page_load_timeout(timeout_s)
            driver.set_script_timeout(timeout_s)
            yield Browser(driver)
        finally:
            driver.quit()
