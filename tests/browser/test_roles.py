"""One journey per role: what each member sees and may do, in the browser, and what the server refuses."""

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from studios import lifecycle
from studios.models import Role, Studio, StudioStatus

from ..factories import make_member, make_running, make_studio, make_user, make_workspace

pytestmark = pytest.mark.browser


class StubSession(BaseHTTPRequestHandler):
    """Stands in for JupyterLab: the proxy in front of it is what these journeys check."""

    def do_GET(self):
        body = b"<!doctype html><title>Stub session</title><h1>Inside the session</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def world(live_platform):
    """A workspace with a running studio (its session a stub) and a stopped one."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubSession)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    workspace = make_workspace()
    author = make_member(workspace, Role.OWNER, username="olga")
    running = make_running(
        make_studio(workspace, name="running-one", author=author), f"http://127.0.0.1:{server.server_address[1]}"
    )
    stopped = make_studio(workspace, name="stopped-one", author=author)
    yield workspace, running, stopped
    server.shutdown()


@dataclass
class Journey:
    role: str
    running_menu: list
    stopped_menu: list
    # A hand-crafted POST: (action, "running" or "stopped", expected status, what the answer says).
    forbidden: tuple
    width: int = 1280


NEEDS_MAINTAIN = "You need the maintain role"
# (running_menu, stopped_menu); Connect, the main action, is beside the menu rather than in it.
MAINTAINER_MENUS = (["Copy URL", "Stop", "Extend"], ["Start", "Delete"])
CONNECTOR_MENUS: tuple[list[str], list[str]] = (["Copy URL"], [])
JOURNEYS = [
    Journey(Role.OWNER, *MAINTAINER_MENUS, forbidden=("delete", "running", 200, "stop it before deleting it")),
    Journey(Role.ADMIN, *MAINTAINER_MENUS, forbidden=("start", "running", 200, "only a stopped or errored studio")),
    Journey(Role.MAINTAIN, *MAINTAINER_MENUS, forbidden=("stop", "stopped", 200, "only a starting or running studio")),
    Journey(Role.LAUNCH, *CONNECTOR_MENUS, forbidden=("start", "stopped", 403, NEEDS_MAINTAIN)),
    # At a phone's width.
    Journey(Role.CONNECT, *CONNECTOR_MENUS, forbidden=("delete", "stopped", 403, NEEDS_MAINTAIN), width=390),
    Journey(Role.VIEW, [], [], forbidden=("stop", "running", 403, NEEDS_MAINTAIN)),
]


def hand_crafted_post(page, path):
    csrf = next(cookie["value"] for cookie in page.context.cookies() if cookie["name"] == "csrftoken")
    return page.request.post(path, form={"csrfmiddlewaretoken": csrf})


def menu_items(page, studio):
    """Open the row's actions menu from the keyboard and read what it offers; then close it with Escape."""
    summary = page.get_by_label(f"Actions for {studio.name}")
    summary.focus()
    page.keyboard.press("Enter")
    items = page.locator("details.menu[open] .menu-items").locator("a, button")
    expect(items.first).to_be_visible()
    offered = items.all_inner_texts()
    page.keyboard.press("Escape")
    expect(page.locator("details.menu[open]")).to_have_count(0)
    expect(summary).to_be_focused()
    return offered


@pytest.mark.parametrize("journey", JOURNEYS, ids=lambda journey: journey.role)
def test_each_role_sees_and_may_do_only_what_its_role_allows(world, open_page, journey, live_platform):
    workspace, running, stopped = world
    page = open_page(make_member(workspace, journey.role), width=journey.width)
    page.goto(workspace.get_absolute_url())
    # The list refreshes itself once its socket is open, which would take the focus from an open menu.
    expect(page.locator("body[data-live=connected]")).to_be_attached()
    expect(page.get_by_role("link", name="running-one", exact=True)).to_be_visible()
    maintainer = journey.running_menu == MAINTAINER_MENUS[0]
    expect(page.get_by_role("link", name="Add studio")).to_have_count(1 if maintainer else 0)
    for studio, wanted in ((running, journey.running_menu), (stopped, journey.stopped_menu)):
        if wanted:
            assert menu_items(page, studio) == wanted
        else:
            expect(page.get_by_label(f"Actions for {studio.name}")).to_have_count(0)
    connect = page.get_by_role("link", name="Connect to running-one")
    if journey.role == Role.VIEW:
        expect(connect).to_have_count(0)
    else:
        expect(connect).to_be_visible()
        expect(connect).to_be_in_viewport()

    # The running studio's link, its own origin: the session for connect and above, a clear refusal for view.
    session = page.context.new_page()
    session.goto(live_platform.session_origin(running) + "/")
    if journey.role == Role.VIEW:
        expect(session.get_by_text("You need the connect role or higher to open this session")).to_be_visible()
    else:
        expect(session.get_by_role("heading", name="Inside the session")).to_be_visible()
    # The stopped studio's link tells its status; only maintainers are offered Start.
    session.goto(live_platform.session_origin(stopped) + "/")
    if journey.role != Role.VIEW:
        expect(session.get_by_text("stopped-one is stopped, not running.")).to_be_visible()
    expect(session.get_by_role("button", name="Start")).to_have_count(1 if maintainer else 0)

    action, which, status, says = journey.forbidden
    studio = {"running": running, "stopped": stopped}[which]
    response = hand_crafted_post(page, f"/studios/{studio.pk}/{action}/")
    assert response.status == status and says in response.text()
    assert Studio.objects.get(pk=studio.pk).status == studio.status


def test_a_non_member_finds_nothing_not_even_that_the_workspace_exists(world, open_page, live_platform):
    workspace, running, stopped = world
    outsider = make_user("outsider")
    outsider.memberships.create(workspace=make_workspace(), role=Role.OWNER)
    page = open_page(outsider)
    page.goto("/")
    expect(page.get_by_text(workspace.name)).to_have_count(0)
    for path in (workspace.get_absolute_url(), running.get_absolute_url(), live_platform.session_origin(running) + "/"):
        assert page.goto(path).status == 404
        expect(page.get_by_text("running-one")).to_have_count(0)
    response = hand_crafted_post(page, f"/studios/{stopped.pk}/start/")
    assert response.status == 404
    assert Studio.objects.get(pk=stopped.pk).status == StudioStatus.STOPPED


def test_an_open_menu_stays_open_while_the_list_follows_another_studio(world, open_page):
    workspace, _running, _stopped = world
    starting = make_studio(workspace, name="starting-one", status=StudioStatus.STARTING)
    page = open_page(make_member(workspace, Role.MAINTAIN))
    page.goto(workspace.get_absolute_url())
    expect(page.locator("body[data-live=connected]")).to_be_attached()
    page.get_by_label("Actions for running-one").click()
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()

    lifecycle.fail_studio(starting.pk, "The session could not start.")
    expect(page.get_by_role("row", name="starting-one").get_by_text("errored")).to_be_visible(timeout=5_000)
    expect(stop).to_be_visible()
