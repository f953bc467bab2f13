"""The full maintain journey, clicked through in headless Chromium: add, start, connect, run a cell, share the
link with a colleague who lands in the same session, stop, start as new, delete."""

import re

import pytest
from playwright.sync_api import expect

from studios.models import Role, Studio

from ..factories import PASSWORD, make_member, make_workspace

pytestmark = pytest.mark.browser


def log_in(page, username):
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_a_maintainer_adds_starts_shares_stops_and_deletes_a_studio(live_platform, browser, tmp_path):
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    make_member(workspace, Role.MAINTAIN, username="mia")
    make_member(workspace, Role.CONNECT, username="carl")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_platform.url)
    page = context.new_page()

    page.goto(f"{live_platform.url}/accounts/login/")
    log_in(page, "mia")
    expect(page.get_by_role("heading", name="Your workspaces")).to_be_visible()
    page.get_by_role("link", name=re.compile(workspace.name)).click()
    expect(page.get_by_text("No studios yet.")).to_be_visible()

    page.get_by_role("link", name="Add your first studio").click()
    page.get_by_label("Name").fill("first-analysis")
    page.get_by_label("Compute environment").select_option(label="local")
    page.get_by_label("CPUs").fill("1")
    page.get_by_label("Memory (MB)").fill("1024")
    page.get_by_role("button", name="Add studio").click()
    expect(page.get_by_role("heading", name="first-analysis")).to_be_visible()
    expect(page.locator("#status-badge")).to_have_text("stopped")

    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#status-badge")).to_have_text("starting")
    # The page follows the start without a reload: the lifecycle pushes each change to it.
    expect(page.locator("#status-badge")).to_have_text("running", timeout=120_000)
    expect(page.get_by_text("Starting JupyterLab")).to_be_visible()

    page.get_by_role("button", name="Copy URL").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    studio = Studio.objects.get(name="first-analysis")
    shared_url = page.evaluate("navigator.clipboard.readText()")
    # The studio's own origin, not a path of the platform's.
    assert shared_url == f"{live_platform.session_origin(studio)}/"

    with context.expect_page() as new_tab:
        page.get_by_role("link", name="Connect").click()
    lab = new_tab.value
    # Through the platform for a ticket, and back to the session's origin.
    lab.wait_for_url(f"{live_platform.session_origin(studio)}/lab*")
    lab.locator(".jp-LauncherCard[title^='Python 3']").first.click(timeout=120_000)
    # JupyterLab drops a run asked for before its kernel is connected, as a user would see.
    expect(lab.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
    cell = lab.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.click()
    cell.type("print(sum(range(10)))")
    lab.keyboard.press("Shift+Enter")
    expect(lab.locator(".jp-OutputArea-output").first).to_have_text("45", timeout=60_000)
    assert studio.session.token not in lab.content()

    # A colleague opens the shared link, logs in, and lands in the same session: mia's notebook is there.
    colleague = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    colleague.goto(shared_url)
    log_in(colleague, "carl")
    colleague.wait_for_url(f"{live_platform.session_origin(studio)}/lab*")
    expect(colleague.locator(".jp-DirListing-item[title*='Untitled.ipynb']")).to_be_visible(timeout=60_000)
    # Both show under the studio's status on mia's page.
    page.bring_to_front()
    for username in ("mia", "carl"):
        expect(page.get_by_title(re.compile(rf"^{username}, connected since"))).to_be_visible(timeout=5_000)

    # The Stop confirmation says who would be cut off.
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#status-badge")).to_have_text("stopped", timeout=60_000)
    assert re.fullmatch(
        r"Stop first-analysis\? It saves a final checkpoint, then its session closes for everyone in it\.\n\n"
        r"Connected now: (mia|carl), connected since \d\d:\d\d; (mia|carl), connected since \d\d:\d\d\.",
        questions[0],
    ), questions
    # The sessions' connections ended with the session.
    expect(page.locator(".avatar")).to_have_count(0, timeout=10_000)

    # Start as new from its last checkpoint: the clone has the notebook, and the parent's history.
    page.get_by_role("link", name="Start as new").click()
    page.get_by_label("Name").fill("first-analysis-v2")
    page.get_by_role("button", name="Start as new").click()
    expect(page.get_by_role("heading", name="first-analysis-v2")).to_be_visible()
    expect(page.locator("#status-badge")).to_have_text("running", timeout=120_000)
    clone = Studio.objects.get(name="first-analysis-v2")
    # (Opened in a tab: Chromium resolves *.localhost, Playwright's own requests do not.)
    notebook = context.new_page().goto(f"{live_platform.session_origin(clone)}/api/contents/Untitled.ipynb")
    assert notebook.ok and '"name": "Untitled.ipynb"' in notebook.text(), notebook.text()
    page.get_by_role("link", name="Checkpoints").click()
    expect(page.get_by_text("inherited")).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#status-badge")).to_have_text("stopped", timeout=60_000)
    page.goto(f"{live_platform.url}{studio.get_absolute_url()}")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Deleted first-analysis.")).to_be_visible()
    # The clone, with its own copy of the history, outlives its parent.
    expect(page.get_by_role("link", name="first-analysis-v2", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="first-analysis", exact=True)).to_have_count(0)
    assert not Studio.objects.filter(pk=studio.pk).exists()
    context.close()
    colleague.context.close()
