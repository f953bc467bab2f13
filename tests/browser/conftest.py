import os

import pytest

CHROMIUM = "/usr/bin/chromium"
# As root, without a display, on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture
def browser(monkeypatch):
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (make test does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser, live_platform):
    """A page in a browser context of its own, logged in as ``user`` (or not logged in), at a viewport size."""
    contexts = []
    # What the platform's Content-Security-Policy refused on its own pages: nothing, or a page lost a behaviour.
    refused = []

    def watch(message):
        if "Content Security Policy" in message.text and message.location["url"].startswith(live_platform.url):
            refused.append(f"{message.location['url']}: {message.text}")

    def open_page(user=None, width=1280, height=900):
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=live_platform.url)
        contexts.append(context)
        context.on("console", watch)
        if user is not None:
            cookie = {"name": "sessionid", "value": live_platform.session_cookie(user), "url": live_platform.url}
            context.add_cookies([cookie])
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()
    assert not refused, refused
