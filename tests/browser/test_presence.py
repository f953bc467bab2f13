"""Live presence, as two members see it: one works in a session, the other watches its avatar come and go."""

import re

import pytest
from playwright.sync_api import expect

from studios import lifecycle
from studios.models import Role, StudioStatus

from ..factories import make_member, make_studio, make_workspace
from ..test_sessions import wait_for_status

pytestmark = pytest.mark.browser


@pytest.fixture
def running_studio(live_platform, tmp_path):
    """A studio with a real JupyterLab session, stopped again afterwards."""
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, name="shared-analysis", author=maintainer, cpus=1, memory_mb=1024)
    lifecycle.start_studio(maintainer, studio)
    yield wait_for_status(studio, StudioStatus.RUNNING)
    lifecycle.stop_studio(maintainer, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=60)


def test_a_members_avatar_appears_for_colleagues_while_they_are_in_the_session(
    running_studio, open_page, live_platform
):
    workspace = running_studio.workspace
    alice = make_member(workspace, Role.CONNECT, username="alice")
    bob = make_member(workspace, Role.VIEW, username="bob")
    watching_list = open_page(bob)
    watching_list.goto(workspace.get_absolute_url())
    watching_detail = watching_list.context.new_page()
    watching_detail.goto(running_studio.get_absolute_url())
    title = re.compile(r"^alice, connected since \d\d:\d\d$")
    avatars = [page.get_by_title(title) for page in (watching_list, watching_detail)]
    for avatar in avatars:
        expect(avatar).to_have_count(0)

    session = open_page(alice)
    session.goto(f"{live_platform.session_origin(running_studio)}/lab")
    expect(session.locator(".jp-LauncherCard").first).to_be_visible(timeout=60_000)
    for avatar in avatars:
        expect(avatar).to_be_visible(timeout=5_000)
        expect(avatar).to_have_text("AL")

    # A second tab is the same member: still one avatar.
    second_tab = session.context.new_page()
    second_tab.goto(f"{live_platform.session_origin(running_studio)}/lab")
    expect(second_tab.locator(".jp-LauncherCard").first).to_be_visible(timeout=60_000)
    session.close()
    expect(avatars[0]).to_have_count(1)
    watching_list.wait_for_timeout(1_000)
    expect(avatars[0]).to_have_count(1)

    second_tab.close()
    for avatar in avatars:
        expect(avatar).to_have_count(0, timeout=5_000)
