"""A safe stop, as members working in JupyterLab see it (the JupyterLab image's extension, images/jupyterlab/notices):
their open documents are saved before the final checkpoint and their tab says who stopped the studio, a tab that
cannot save does not hold the stop up and the stop says so, an automatic stop is warned of inside the session, and
JupyterLab asks nothing about news."""

import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from checkpoints.models import Checkpoint
from studios import lifecycle, tasks
from studios.models import Event, Role, Session, StudioStatus
from studios.supervisor import protocol

from ..factories import make_member, make_studio, make_workspace
from ..live import Browser, wait_for_status, wait_until

pytestmark = pytest.mark.browser


def notebook(source):
    """A Python notebook of one code cell."""
    cell = {"cell_type": "code", "source": source, "metadata": {}, "outputs": [], "execution_count": None}
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return {"cells": [cell], "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def studio(live_platform, tmp_path):
    """A running JupyterLab studio whose maintainer is Bob Stone; stopped again afterwards."""
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    bob = make_member(workspace, Role.MAINTAIN, username="bob")
    bob.first_name, bob.last_name = "Bob", "Stone"
    bob.save()
    studio = make_studio(workspace, name="rnaseq", author=bob, cpus=1, memory_mb=1024)
    lifecycle.start_studio(bob, studio)
    yield wait_for_status(studio, StudioStatus.RUNNING)
    studio.refresh_from_db()
    if studio.can_stop:
        lifecycle.stop_studio(bob, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def contents(platform, user, studio):
    """``user``'s client of the session's contents API (JupyterLab's files), and its XSRF header."""
    session = Browser(platform, user).session(studio)
    return session.http, {"X-XSRFToken": session.xsrf()}


def put_notebook(platform, user, studio, path, source):
    http, headers = contents(platform, user, studio)
    answer = http.put(f"/api/contents/{path}", json={"type": "notebook", "content": notebook(source)}, headers=headers)
    assert answer.status_code in (200, 201), answer.text


def open_lab(open_page, platform, user, studio, path="lab"):
    """``user``'s JupyterLab tab at ``path``, once its notices socket is open."""
    page = open_page(user)
    notices = []
    page.on("websocket", lambda socket: notices.append(socket) if protocol.NOTICES_PATH in socket.url else None)
    page.goto(f"{platform.session_origin(studio)}/{path}")
    wait_until(lambda: page.evaluate("1") and notices, 60, "the page's notices socket to open")
    return page


def add_line_to_first_cell(page, line):
    """Type ``line`` as a new last line of the notebook's first cell, leaving the notebook unsaved."""
    editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    expect(editor).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-Spinner")).to_have_count(0, timeout=60_000)  # the notebook has loaded
    editor.click()
    expect(page.locator(".jp-Notebook.jp-mod-editMode")).to_have_count(1)  # keys now go to the cell, not commands
    page.keyboard.press("Control+End")
    page.keyboard.press("Enter")
    page.keyboard.type(line)
    expect(editor).to_contain_text(line)
    expect(page.locator(".lm-TabBar-tab.jp-mod-dirty")).to_have_count(1)


def test_jupyterlab_warns_of_an_automatic_stop_with_a_link_to_the_studio_and_asks_nothing_about_news(
    studio, live_platform, open_page
):
    alice = make_member(studio.workspace, Role.CONNECT, username="alice")
    page = open_lab(open_page, live_platform, alice, studio)
    expect(page.locator(".jp-LauncherCard").first).to_be_visible(timeout=60_000)

    # Ten minutes before its lifespan of 8 h runs out, the next tick of Celery beat warns.
    stops_at = timezone.now() + timedelta(minutes=10)
    Session.objects.filter(pk=studio.session_id).update(started=stops_at - timedelta(hours=8), stops_at=stops_at)
    tasks.stop_due_studios()
    warning = page.locator(".jp-toast-message")
    expect(warning).to_have_text(
        re.compile(r"^rnaseq will be stopped at \d\d:\d\d \w+: its lifespan of 8 h runs out\.$"), timeout=15_000
    )
    # The only notification: JupyterLab's news prompt is turned off in the image.
    expect(warning).to_have_count(1)
    expect(page.get_by_text("official Jupyter news")).to_have_count(0)

    # The extension cannot act with the platform's rights: it opens the studio's page, where members can.
    with page.context.expect_page() as opened:
        page.get_by_role("button", name="Open the studio's page").click()
    platform_page = opened.value
    expect(platform_page).to_have_url(f"{live_platform.url}{studio.get_absolute_url()}")
    expect(platform_page.get_by_role("alert")).to_contain_text("its lifespan of 8 h runs out")


def test_an_unsaved_notebook_edit_survives_a_stop_by_another_member_and_the_tab_says_who_stopped_it(
    studio, live_platform, open_page
):
    alice = make_member(studio.workspace, Role.CONNECT, username="alice")
    bob = studio.author
    put_notebook(live_platform, alice, studio, "analysis.ipynb", "x = 1")
    page = open_lab(open_page, live_platform, alice, studio, "lab/tree/analysis.ipynb")
    add_line_to_first_cell(page, "print('kept through the stop')")

    lifecycle.stop_studio(bob, studio)
    stopped = page.locator("#studios-stopped")
    expect(stopped.get_by_role("alert")).to_contain_text("rnaseq was stopped by Bob Stone.", timeout=30_000)
    expect(stopped).to_contain_text("Your open documents were saved")
    expect(stopped.get_by_role("link", name="Open the studio's page")).to_have_attribute(
        "href", f"{live_platform.url}{studio.get_absolute_url()}"
    )
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert studio.status_reason == ""  # nothing was lost

    # The next start restores the final checkpoint: the edit is in the notebook.
    lifecycle.start_studio(bob, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    page = open_lab(open_page, live_platform, alice, studio, "lab/tree/analysis.ipynb")
    expect(page.locator(".jp-Notebook .jp-Cell .cm-content").first).to_contain_text(
        "print('kept through the stop')", timeout=60_000
    )


def test_a_tab_that_cannot_save_does_not_hold_up_the_stop_which_says_so(studio, live_platform, open_page):
    alice = make_member(studio.workspace, Role.CONNECT, username="alice")
    put_notebook(live_platform, alice, studio, "hangs.ipynb", "x = 1")
    page = open_lab(open_page, live_platform, alice, studio, "lab/tree/hangs.ipynb")
    add_line_to_first_cell(page, "y = 2")
    # The tab's saves never reach the session (a network that hangs).
    page.route("**/api/contents/**", lambda route: None if route.request.method == "PUT" else route.continue_())

    began = time.monotonic()
    lifecycle.stop_studio(studio.author, studio)
    stopped = page.locator("#studios-stopped")
    expect(stopped).to_contain_text("Your open documents could not be saved in time", timeout=30_000)
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    # The stop waited for the tab at most its bound, and says what was lost; its final checkpoint was saved.
    took = time.monotonic() - began
    assert took < protocol.SAVE_SECONDS + 30, f"the stop took {took:.0f} s"
    lost = "A page open in the session could not save its documents in time: their unsaved changes are lost."
    assert studio.status_reason == lost
    assert Event.objects.get(session=studio.session, kind=Event.Kind.STOPPED).message == lost
    assert Session.objects.get(pk=studio.session_id).checkpoint.state == Checkpoint.State.FINALIZED


def test_two_members_editing_one_notebook_at_a_stop_lose_neither_version(studio, live_platform, open_page):
    """Without real-time collaboration each tab has a version of its own: the tabs save one after the other, so the
    second does not write over (or into) the first's save, and keeps its own version beside it instead."""
    alice = make_member(studio.workspace, Role.CONNECT, username="alice")
    carl = make_member(studio.workspace, Role.CONNECT, username="carl")
    put_notebook(live_platform, alice, studio, "shared.ipynb", "x = 1")
    # alice's tab opened first, so it saves first.
    pages = {user: open_lab(open_page, live_platform, user, studio, "lab/tree/shared.ipynb") for user in (alice, carl)}
    for user, page in pages.items():
        add_line_to_first_cell(page, f"print('{user.username} was here')")

    lifecycle.stop_studio(studio.author, studio)
    expect(pages[alice].locator("#studios-stopped")).to_contain_text("Your open documents were saved", timeout=30_000)
    kept = pages[carl].locator("#studios-stopped p", has_text="Your version was kept beside theirs")
    expect(kept).to_have_text(re.compile(r".* as shared-not-saved-[0-9T-]{19}\.ipynb\."), timeout=30_000)
    copy = re.search(r"shared-not-saved-[0-9T-]{19}\.ipynb", kept.inner_text()).group()
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert studio.status_reason == ""  # nothing was lost

    lifecycle.start_studio(studio.author, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    http, _ = contents(live_platform, alice, studio)
    for path, source in (("shared.ipynb", "x = 1\nprint('alice was here')"), (copy, "x = 1\nprint('carl was here')")):
        answer = http.get(f"/api/contents/{path}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["content"]["cells"][0]["source"] == source
