"""Browser tests: headless Chromium (Debian's /usr/bin/chromium) through Playwright."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..server import ServerProcess
from ..support import require_service, session_cookie

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling out of this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _playwright_importable() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


# Module scope: Playwright's loop must be gone before the async tests of other modules run.
@pytest.fixture(scope="module")
def browser():
    require_service(
        "browser",
        Path(CHROMIUM).exists() and _playwright_importable(),
        f"needs Chromium at {CHROMIUM} (apt-get install chromium) and the playwright package",
    )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, and Django then
    # refuses ORM calls from the test body. Nothing async of ours runs on that loop.
    # https://github.com/microsoft/playwright-pytest/issues/29
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        # Other modules' async tests must keep Django's check for ORM calls on the loop.
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def site_server(transactional_db):
    """The project's server (daphne) on a free port, against the test database."""
    with ServerProcess(NOTIFICATIONS_LOG_LEVEL="INFO") as server:
        yield server


@pytest.fixture
def signed_in(browser, site_server):
    """``signed_in(user)`` -> a new browser context carrying that user's session cookie."""
    contexts = []

    def open_context(user):
        context = browser.new_context()
        name, _, value = session_cookie(user).partition("=")
        context.add_cookies([{"name": name, "value": value, "url": site_server.origin}])
        contexts.append(context)
        return context

    yield open_context
    for context in contexts:
        context.close()


@pytest.fixture
def page_errors():
    """Collect uncaught page errors; a test asserts the list stays empty."""
    return []


def watch(page, errors: list[str]) -> None:
    page.on("pageerror", lambda error: errors.append(str(error)))


@pytest.fixture(autouse=True)
def _fresh_hub():
    """Overrides the async hub reset of tests/conftest.py: the hub runs in the server process
    here, and an async fixture cannot run beside Playwright's event loop."""
    yield
