"""Debian's chromium driven by Playwright (never `playwright install`)."""

import shutil

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_path() -> str:
    """The system chromium. Missing is a failure, never a skip: `make test` installs it
    (scripts/prerequisites), so a run without it has not tested the pages."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `make test` (as root it installs it) or apt-get install chromium")
    return path


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)


def serving(url: str) -> bool:
    """True once the web server at `url` answers its login page."""
    import urllib.request

    try:
        urllib.request.urlopen(url + "/accounts/login/", timeout=1)
    except OSError:
        return False
    return True
