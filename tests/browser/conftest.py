import os
from pathlib import Path

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


# axe-core, the accessibility rules the pages are audited with (``make test`` installs it into the virtualenv).
AXE = Path(__file__).resolve().parents[2] / ".venv/axe/node_modules/axe-core/axe.min.js"
# The WCAG 2.1 rules, levels A and AA.
AXE_RULES = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def axe_violations(page):
    """What axe-core finds against WCAG 2.1 A and AA on the page as it is now: ["rule: where", ...]. (Evaluated
    through the browser's protocol: the pages' Content-Security-Policy allows no injected script, rightly.)"""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: make test installs axe-core")
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text() + ";0")
    found = page.evaluate("options => axe.run(document, options)", AXE_RULES)["violations"]
    return [f"{rule['id']}: {node['target']}" for rule in found for node in rule["nodes"]]
