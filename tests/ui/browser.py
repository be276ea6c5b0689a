"""Finding the browser the browser tests drive: Debian's chromium (scripts/install-system-deps.sh installs it),
with Playwright's driver from the test extra; no browser is downloaded."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# --no-sandbox: the tests run as root on CI, where Chromium's sandbox refuses to start; --disable-dev-shm-usage:
# containers often have a small /dev/shm, where Chromium's renderers crash.
LAUNCH_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]


def chromium_executable() -> str | None:
    """MOLTBOT_TEST_CHROMIUM, else the first Chromium installed; None when there is none."""
    wanted = os.environ.get("MOLTBOT_TEST_CHROMIUM")
    if wanted:
        return wanted
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


def playwright_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if chromium_executable() is None:
        return "no Chromium: `apt-get install chromium` (scripts/install-system-deps.sh installs it)"
    return None


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """Playwright's driver on that Chromium, headless, closed afterwards (check playwright_missing() first)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_executable(), args=LAUNCH_ARGS)
        yield browser
        browser.close()
