"""How long after a member connects their avatar shows on another member's page.

Runs the whole product (``manage.py runstudios``) on embedded defaults (in-memory channel layer) in a
temporary data dir, starts one JupyterLab studio as the demo ``maintain`` user, and opens the studio list
as ``view`` in headless Chromium (Debian's, as the browser tests drive it). Then RUNS times, as ``connect``
in another browser context: opens the studio's session (as Connect does) and times
  * connect to avatar: from opening the session's URL to the avatar showing on the list page, which
    includes loading JupyterLab until it opens its first WebSocket;
  * recorded to avatar: from the proxy recording the session's first WebSocket to the avatar showing
    (the presence push: render, channel layer, consumer, the page's swap);
  * tab closed to avatar gone: from closing the session's tab to the avatar leaving the list page.
Times are read from the pages' and the server's clocks (the same machine). Prints medians.
Usage: .venv/bin/python bench/presence_bench.py [RUNS]
"""

import statistics
import sys
import time

from demo_platform import DemoUser, demo_platform, setup_django
from playwright.sync_api import sync_playwright

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]

# In the watching page: when the avatar of ``connect`` appeared and left (reset to null before each run).
WATCH_AVATAR = """
new MutationObserver(() => {
  const shown = document.querySelector('[title^="connect, connected since"]') !== null;
  if (shown && window.avatarSeen === null) window.avatarSeen = Date.now();
  if (!shown && window.avatarSeen !== null && window.avatarGone === null) window.avatarGone = Date.now();
}).observe(document.body, {childList: true, subtree: true});
"""


def log_in(context, base, username, password):
    page = context.new_page()
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")
    return page


def main():
    with demo_platform() as (base, password, env), sync_playwright() as playwright:
        setup_django(env)
        from studios.models import SessionConnection

        maintainer = DemoUser(base, "maintain", password)
        studio_id = maintainer.add_studio("presence-bench")
        maintainer.post(f"/studios/{studio_id}/start/")
        maintainer.wait_for(studio_id, "running")
        try:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            # The platform's CSP has no 'unsafe-eval', which the watching page's polls (wait_for_function) need.
            watcher = log_in(browser.new_context(bypass_csp=True), base, "view", password)
            watcher.goto(f"{base}/w/demo/analysis/")
            watcher.evaluate(WATCH_AVATAR)
            member = browser.new_context()
            log_in(member, base, "connect", password).close()

            to_avatar, recorded_to_avatar, to_gone = [], [], []
            for _ in range(RUNS):
                watcher.evaluate("window.avatarSeen = window.avatarGone = null")
                session = member.new_page()
                connected = time.time() * 1000
                session.goto(f"http://s{studio_id}.localhost:{env['STUDIOS_SESSION_PORT']}/")
                watcher.wait_for_function("window.avatarSeen !== null", timeout=60_000)
                seen = watcher.evaluate("window.avatarSeen")
                to_avatar.append(seen - connected)
                first = SessionConnection.objects.filter(studio_id=studio_id).earliest("opened").opened
                recorded_to_avatar.append(seen - first.timestamp() * 1000)
                closed = time.time() * 1000
                session.close()
                watcher.wait_for_function("window.avatarGone !== null", timeout=60_000)
                to_gone.append(watcher.evaluate("window.avatarGone") - closed)
            browser.close()
        finally:  # a failed run leaves no session running
            maintainer.post(f"/studios/{studio_id}/stop/")
            maintainer.wait_for(studio_id, "stopped")

    for label, samples in (
        ("connect to avatar", to_avatar),
        ("recorded to avatar", recorded_to_avatar),
        ("tab closed to avatar gone", to_gone),
    ):
        runs = ", ".join(f"{sample:.0f}" for sample in samples)
        print(f"{label}, median of {RUNS}: {statistics.median(samples):.0f} ms (runs: {runs})")


if __name__ == "__main__":
    main()
