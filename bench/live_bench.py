"""Live pages: how soon a status change shows on open pages, and what open pages cost the web process while idle;
this checkout (pushed over the pages' socket) side by side with an anchor (ANCHOR, default ``main``: pages that
poll while a studio is mid-transition), each run as the whole product (``demo_platform``) in the same run.

For each of the two checkouts (``git worktree`` of the anchor, removed afterwards):
  * push latency, RUNS times: the demo ``maintain`` user starts a JupyterLab studio over HTTP while ``view`` has
    its list and its page open in headless Chromium (Debian's). Measured: from the studio becoming running (its
    ``status_changed``, the server's clock) to the status on the open page saying so (the page's clock, the same
    machine). The pages are loaded again once the start is asked, so that the anchor's pages poll (they poll only
    when loaded mid-transition); whether the pages loaded before the start showed it without reload is counted.
  * idle cost: PAGES pages open (half the list, half the studio's page) for IDLE seconds, with the studio
    ``starting`` (set in the database, as a start that takes minutes would be: a Batch job waiting for an
    instance) and then with every studio stable; the web process's CPU time (utime + stime of ``runstudios``,
    which serves HTTP; its Celery worker is a process of its own) over that time.
Prints a table of medians. Usage: .venv/bin/python bench/live_bench.py [RUNS] [PAGES] [IDLE] [ANCHOR]
"""

import contextlib
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from demo_platform import ROOT, DemoUser, demo_platform
from playwright.sync_api import sync_playwright

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
PAGES = int(sys.argv[2]) if len(sys.argv) > 2 else 20
IDLE = float(sys.argv[3]) if len(sys.argv) > 3 else 60
ANCHOR = sys.argv[4] if len(sys.argv) > 4 else "main"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
TICKS = os.sysconf("SC_CLK_TCK")

# In a watching page: when its status (the studio page's badge, the list row's badge) first said each status.
WATCH_STATUS = """
window.seen = {};
new MutationObserver(() => {
  const badge = document.querySelector('#status-badge, #studio-table .badge');
  if (badge && !(badge.textContent in window.seen)) window.seen[badge.textContent] = Date.now();
}).observe(document.body, {childList: true, subtree: true, characterData: true});
"""


@contextlib.contextmanager
def checkout(ref):
    """A worktree of ``ref`` (this checkout itself for None)."""
    if ref is None:
        yield ROOT
        return
    folder = Path(tempfile.mkdtemp(prefix="studios-anchor-")) / "tree"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(folder), ref], cwd=ROOT, check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, check=True)
        shutil.rmtree(folder.parent, ignore_errors=True)


def server_pid(base):
    """The process listening on the platform's port: ``runstudios``, whose uvicorn serves HTTP."""
    port = base.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return int(re.search(r"pid=(\d+)", listening).group(1))


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


class Database:
    """The platform's own SQLite database (embedded defaults), read and written as the platform does; not through
    Django, whose settings name one data dir per process and the bench runs two platforms."""

    def __init__(self, env):
        self.connection = sqlite3.connect(Path(env["STUDIOS_DATA_DIR"]) / "studios.sqlite3", timeout=30)

    def status_changed(self, studio_id):
        (changed,) = self.connection.execute(
            "SELECT status_changed FROM studios_studio WHERE id = ?", (studio_id,)
        ).fetchone()
        return datetime.fromisoformat(changed).replace(tzinfo=UTC).timestamp() * 1000

    def set_status(self, studio_id, status):
        with self.connection:
            self.connection.execute("UPDATE studios_studio SET status = ? WHERE id = ?", (status, studio_id))


def seen_running(page, timeout=30):
    """Wait for the page to have shown ``running``. (Polled from here: Playwright's wait_for_function evaluates a
    string, which the pages' Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate("'running' in window.seen"):
        if time.monotonic() > deadline:
            raise SystemExit(f"{page.url} did not show running within {timeout} s")
        time.sleep(0.05)


def open_watched(context, url):
    page = context.new_page()
    page.goto(url)
    page.evaluate(WATCH_STATUS)
    return page


def measure(ref, browser):
    with checkout(ref) as root, demo_platform(root) as (base, password, env):
        database = Database(env)
        maintainer = DemoUser(base, "maintain", password)
        studio_id = maintainer.add_studio("live-bench")
        for number in range(19):  # a list of 20
            maintainer.add_studio(f"other-{number}")
        context = browser.new_context()
        login = context.new_page()
        login.goto(f"{base}/accounts/login/")
        login.get_by_label("Username").fill("view")
        login.get_by_label("Password").fill(password)
        login.get_by_role("button", name="Log in").click()
        login.wait_for_url(f"{base}/")
        list_url, studio_url = f"{base}/w/demo/analysis/?q=live-bench", f"{base}/studios/{studio_id}/"

        latencies, shown_without_reload = [], 0
        for _ in range(RUNS):
            before = [open_watched(context, url) for url in (list_url, studio_url)]
            time.sleep(1)  # the pages' sockets open
            maintainer.post(f"/studios/{studio_id}/start/")
            again = [open_watched(context, url) for url in (list_url, studio_url)]
            maintainer.wait_for(studio_id, "running")
            running = database.status_changed(studio_id)
            for page in again:
                seen_running(page)
                latencies.append(page.evaluate("window.seen.running") - running)
            shown_without_reload += sum(page.evaluate("'running' in window.seen") for page in before)
            maintainer.post(f"/studios/{studio_id}/stop/")
            maintainer.wait_for(studio_id, "stopped")
            for page in before + again:
                page.close()

        idle = {}
        for state in ("starting", "stopped"):
            database.set_status(studio_id, state)
            pages = [open_watched(context, (list_url, studio_url)[number % 2]) for number in range(PAGES)]
            time.sleep(5)  # loaded, sockets open
            pid = server_pid(base)
            before_cpu = cpu_seconds(pid)
            time.sleep(IDLE)
            idle[state] = cpu_seconds(pid) - before_cpu
            for page in pages:
                page.close()
        database.set_status(studio_id, "stopped")
        context.close()
    return latencies, shown_without_reload, idle


def main():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        results = {label: measure(ref, browser) for label, ref in ((f"{ANCHOR} (polling)", ANCHOR), ("push", None))}
        browser.close()
    print(f"| measured | {' | '.join(results)} |")
    print(f"|---|{'---|' * len(results)}")
    cells = []
    for latencies, _, _ in results.values():
        runs = ", ".join(f"{sample:.0f}" for sample in latencies)
        cells.append(f"{statistics.median(latencies):.0f} ms (runs: {runs})")
    print(f"| running to the open pages (list and studio page), median of {2 * RUNS} | {' | '.join(cells)} |")
    shown = [f"{count} of {2 * RUNS}" for _, count, _ in results.values()]
    print(f"| pages loaded before the start that showed it without reload | {' | '.join(shown)} |")
    for state, words in (("starting", "one studio starting"), ("stopped", "every studio stable")):
        cpu = [f"{idle[state]:.2f} s" for _, _, idle in results.values()]
        print(f"| web process CPU, {PAGES} pages open {IDLE:.0f} s, {words} | {' | '.join(cpu)} |")


if __name__ == "__main__":
    main()
