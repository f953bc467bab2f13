"""How long VS Code's workbench takes to load through the platform's proxy, against straight from the session.

Runs the whole product (``manage.py runstudios``) on embedded defaults, starts a VS Code studio as the demo
``maintain`` user, then RUNS times, alternating, opens the studio's connect URL in a fresh headless Chromium
context (logged in) and the session's own endpoint (with the session token as an extra header), timing
navigation to the file explorer being shown (the workbench has connected its WebSocket and listed the
folder). Prints medians. Usage: .venv/bin/python bench/workbench_bench.py [RUNS]
"""

import statistics
import sys
import time

from demo_platform import DemoUser, demo_platform, setup_django
from playwright.sync_api import expect, sync_playwright

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
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


def main():
    with demo_platform() as (base, password, env), sync_playwright() as playwright:
        user = DemoUser(base, "maintain", password)
        studio_id = user.add_studio("workbench", "vscode")
        user.post(f"/studios/{studio_id}/start/")
        user.wait_for(studio_id, "running")
        setup_django(env)
        from studios.models import Studio

        studio = Studio.objects.get(pk=studio_id)
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        times = {"through the proxy": [], "straight to the session": []}
        for _ in range(RUNS):
            for way, samples in times.items():
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                if way == "through the proxy":
                    context.add_cookies(
                        [{"name": "sessionid", "value": user.http.cookies.get("sessionid"), "url": base}]
                    )
                    url = f"http://s{studio.pk}.localhost:{base.rsplit(':', 1)[1]}/?folder=/workspace"
                else:
                    context.set_extra_http_headers({"X-Studios-Session-Token": studio.session.token})
                    url = f"{studio.session.endpoint}/?folder=/workspace"
                page = context.new_page()
                began = time.perf_counter()
                page.goto(url)
                expect(page.get_by_role("tree", name="Files Explorer")).to_be_visible(timeout=60_000)
                samples.append(time.perf_counter() - began)
                context.close()
        browser.close()
        user.post(f"/studios/{studio_id}/stop/")
        user.wait_for(studio_id, "stopped")
    for way, samples in times.items():
        runs = ", ".join(f"{t:.2f}" for t in samples)
        print(f"VS Code workbench {way}, median of {RUNS}: {statistics.median(samples):.2f} s (runs: {runs})")


if __name__ == "__main__":
    main()
