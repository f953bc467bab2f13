"""Live pages: two members, each with the studio list and the studio's page open in a browser of their own, see
each other's start, its steps, the checkpoint and the stop without reloading, within a second of the change."""

import re

import pytest
from playwright.sync_api import expect

from studios import lifecycle
from studios.models import Role, StudioStatus
from studios.tasks import checkpoint_session

from ..factories import make_member, make_running, make_studio, make_workspace
from ..live import wait_for_status, wait_until

pytestmark = pytest.mark.browser

# How soon after a change every open page shows it.
PUSHED_WITHIN_MS = 1_000


@pytest.fixture
def two_members(live_platform, open_page, tmp_path):
    """alice and bob (both maintain), each with the list and the studio's page open in a browser of their own."""
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    alice = make_member(workspace, Role.MAINTAIN, username="alice")
    bob = make_member(workspace, Role.MAINTAIN, username="bob")
    studio = make_studio(workspace, name="shared-analysis", author=alice, cpus=1, memory_mb=1024)
    pages = {}
    for user in (alice, bob):
        listing = open_page(user)
        detail = listing.context.new_page()
        listing.goto(workspace.get_absolute_url())
        detail.goto(studio.get_absolute_url())
        for page in (listing, detail):
            expect(page.locator("body[data-live=connected]")).to_be_attached()
        pages[user.username] = listing, detail
    return studio, pages


def test_two_members_see_each_others_start_steps_checkpoint_and_stop_without_reload(two_members):
    studio, pages = two_members
    (alice_list, alice_detail), (bob_list, bob_detail) = pages["alice"], pages["bob"]
    lists, details = (alice_list, bob_list), (alice_detail, bob_detail)
    row = [page.get_by_role("row", name=re.compile("shared-analysis")) for page in lists]
    badges = [page.locator("#status-badge") for page in details]

    alice_list.get_by_label("Actions for shared-analysis").click()
    alice_list.get_by_role("button", name="Start", exact=True).click()
    expect(alice_list.get_by_text("Starting shared-analysis.")).to_be_visible()  # she stays on the list
    for badge in badges:
        expect(badge).to_have_text(re.compile("starting|running"), timeout=PUSHED_WITHIN_MS)

    # Each start-up step the session reports shows on both studio pages as it comes.
    def steps_after_the_first():
        studio.refresh_from_db()
        return [step["name"] for step in studio.session.steps[1:]]

    for name in wait_until(steps_after_the_first, 120, "the session to report its start-up steps"):
        for page in details:
            expect(page.get_by_label("Start-up progress").get_by_text(name)).to_be_visible(timeout=PUSHED_WITHIN_MS)

    wait_for_status(studio, StudioStatus.RUNNING)
    for badge in badges:
        expect(badge).to_have_text("running", timeout=PUSHED_WITHIN_MS)
    for cells in row:
        expect(cells.get_by_text("running", exact=True)).to_be_visible(timeout=PUSHED_WITHIN_MS)
        expect(cells.get_by_role("link", name="Connect to shared-analysis")).to_be_visible()
    expect(alice_list.get_by_text("Starting shared-analysis.")).to_have_count(0)  # the start is over

    checkpoint_session(studio.session_id)
    for page in details:
        saved = page.locator("#last-checkpoint")
        expect(saved).to_contain_text(re.compile(r"Last checkpoint \S+: .+, saved"), timeout=PUSHED_WITHIN_MS)
        expect(page.locator("#layer-usage")).to_contain_text("Writable layer:")

    bob_detail.once("dialog", lambda dialog: dialog.accept())  # the confirmation, which lists who is connected
    bob_detail.get_by_role("button", name="Stop", exact=True).click()
    expect(bob_detail.get_by_text("Stopping shared-analysis.")).to_be_visible()
    for page in (alice_detail, *lists):
        expect(page.get_by_text(re.compile("^(stopping|stopped)$")).first).to_be_visible(timeout=PUSHED_WITHIN_MS)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    for badge in badges:
        expect(badge).to_have_text("stopped", timeout=PUSHED_WITHIN_MS)
    expect(bob_detail.get_by_text("Stopping shared-analysis.")).to_have_count(0)  # the stop is over
    for cells in row:
        expect(cells.get_by_text("stopped", exact=True)).to_be_visible(timeout=PUSHED_WITHIN_MS)


def test_a_page_whose_socket_is_down_says_it_is_reconnecting_and_polls_until_it_is_back(live_platform, open_page):
    workspace = make_workspace()
    studio = make_studio(workspace, name="followed", status=StudioStatus.STARTING)
    page = open_page(make_member(workspace, Role.VIEW))
    sockets, down = [], []

    def through_the_test(socket):
        if down:  # the platform is away: every attempt to reconnect fails
            socket.close(code=1013)
        else:
            socket.connect_to_server()
            sockets.append(socket)

    page.route_web_socket(re.compile(r"/presence/$"), through_the_test)
    page.goto(studio.get_absolute_url())
    expect(page.locator("body[data-live=connected]")).to_be_attached()
    # The start's progress: a spinner and the time it has taken, ticking.
    progress = page.locator("#progress")
    expect(progress.locator(".spinner")).to_be_visible()
    expect(progress).to_have_text(re.compile(r"^\s*Starting for 0:\d\d$"))
    expect(progress).not_to_have_text(progress.inner_text(), timeout=3_000)
    reconnecting = page.get_by_role("status").filter(has_text="Reconnecting")
    expect(reconnecting).to_be_hidden()

    down.append(True)
    sockets[-1].close(code=1012)  # the platform restarts
    expect(reconnecting).to_be_visible()
    lifecycle.fail_studio(studio.pk, "The session could not start.")  # pushed to no one: the socket is down
    expect(page.locator("#status-badge")).to_have_text("errored", timeout=10_000)

    down.clear()
    expect(reconnecting).to_be_hidden(timeout=30_000)
    expect(page.locator("body[data-live=connected]")).to_be_attached()
    lifecycle.delete_studio(make_member(workspace, Role.MAINTAIN), studio)
    expect(page.get_by_text("This studio was deleted.")).to_be_visible(timeout=5_000)


def test_a_studio_added_by_a_colleague_appears_on_open_lists_where_it_belongs(live_platform, open_page):
    workspace = make_workspace()
    maintainer = make_member(workspace, Role.MAINTAIN)
    make_studio(workspace, name="rnaseq-old")
    lists = {}
    for query in ("", "?q=rnaseq", "?q=variant"):
        page = open_page(make_member(workspace, Role.VIEW))
        page.goto(workspace.get_absolute_url() + query)
        expect(page.locator("body[data-live=connected]")).to_be_attached()
        lists[query] = page

    local = workspace.compute_environments.get(name="local")
    lifecycle.add_studio(maintainer, workspace, name="rnaseq-new", compute_environment=local, template="jupyterlab")
    for query in ("", "?q=rnaseq"):
        rows = lists[query].locator("table.studios tbody tr")
        expect(rows.first).to_contain_text("rnaseq-new", timeout=PUSHED_WITHIN_MS)  # newest first
        expect(rows).to_have_count(2)
    expect(lists["?q=variant"].get_by_text("No studio matches")).to_be_visible()
    expect(lists["?q=variant"].get_by_text("rnaseq-new")).to_have_count(0)


def test_copy_urls_confirmation_outlasts_a_change_pushed_meanwhile(live_platform, open_page):
    workspace = make_workspace()
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_running(make_studio(workspace, name="copied", lifespan_hours=8))
    page = open_page(maintainer)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_platform.url)
    page.goto(studio.get_absolute_url())
    expect(page.locator("body[data-live=connected]")).to_be_attached()

    page.get_by_role("button", name="Copy URL").click()
    copied = page.get_by_role("button", name="Copied")
    expect(copied).to_be_visible()
    # A change pushed to the page now (here a colleague extends the session) redraws its status panel, button and all:
    # the member still sees that the link was copied.
    lifecycle.extend_studio(make_member(workspace, Role.MAINTAIN), studio, 1)
    expect(page.get_by_label("Status")).to_contain_text("left of 9 h", timeout=PUSHED_WITHIN_MS)
    assert copied.is_visible(), "the redrawn panel says Copy URL again, as if nothing had been copied"
    assert page.evaluate("navigator.clipboard.readText()") == f"{live_platform.session_origin(studio)}/"
    expect(page.get_by_role("button", name="Copy URL")).to_be_visible()  # and then it goes, as it would have
