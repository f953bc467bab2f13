"""Retakes the README's screenshots (docs/studio-list.png, studio-detail.png, studio-add.png) from the product as a
fresh ``make run`` serves it: ``manage.py runstudios`` on its embedded defaults in a new data dir, with the demo
data ``seed_demo`` makes (the Analysis workspace and its three stopped studios), in headless Chromium (Debian's).

As ``maintain`` it starts rnaseq-qc and opens its JupyterLab; ``connect`` opens it too, so that the list shows two
members connected. Then it stops the studio. Needs ``make images`` first (as root, sessions run from the images).
Usage: .venv/bin/python docs/screenshots.py
"""

import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "bench"))

from demo_platform import DemoUser, demo_platform, setup_django  # noqa: E402  (the benches' platform)

SIZE = {"width": 1280, "height": 800}


def log_in(browser, base, username, password):
    page = browser.new_context(viewport=SIZE).new_page()
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    return page


def main():
    with demo_platform() as (base, password, env), sync_playwright() as playwright:
        maintainer = DemoUser(base, "maintain", password)
        setup_django(env)
        from studios.models import Studio

        studio_id = Studio.objects.get(name="rnaseq-qc").pk
        maintainer.post(f"/studios/{studio_id}/start/")
        maintainer.wait_for(studio_id, "running")
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
        )
        pages = {name: log_in(browser, base, name, password) for name in ("maintain", "connect")}
        for page in pages.values():
            page.goto(f"{base}/studios/{studio_id}/")
            session = page.context.new_page()
            session.goto(page.get_by_role("link", name="Connect", exact=True).get_attribute("href"))
            expect(session.locator(".jp-Launcher, .jp-LauncherBody").first).to_be_visible(timeout=60_000)
        page = pages["maintain"]
        page.goto(f"{base}/w/demo/analysis/")
        expect(page.locator(f"#avatars-{studio_id} .avatar")).to_have_count(2)
        page.screenshot(path=DOCS / "studio-list.png")
        page.goto(f"{base}/studios/{studio_id}/")
        expect(page.locator("#status-badge")).to_have_text("running")
        page.screenshot(path=DOCS / "studio-detail.png")
        page.goto(f"{base}/w/demo/analysis/studios/add/")
        page.get_by_label("Name").fill("methylation")
        page.screenshot(path=DOCS / "studio-add.png")
        browser.close()
        maintainer.post(f"/studios/{studio_id}/stop/")
        maintainer.wait_for(studio_id, "stopped")


if __name__ == "__main__":
    main()
