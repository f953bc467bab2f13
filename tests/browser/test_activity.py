"""The workspace's Activity page in the browser: filtered and paged, readable on a phone, with the pages' icon."""

import pytest
from playwright.sync_api import expect

from studios import lifecycle
from studios.models import Role

from ..factories import make_member, make_studio, make_workspace

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", [1280, 390])
def test_an_admin_filters_the_workspace_activity_by_kind(live_platform, open_page, width):
    workspace = make_workspace()
    admin = make_member(workspace, Role.ADMIN, username="ada")
    for name in ("alpha", "beta"):
        studio = lifecycle.add_studio(
            admin,
            workspace,
            name=name,
            description="",
            compute_environment=workspace.compute_environments.get(),
            cpus=1,
            memory_mb=1024,
        )
    lifecycle.change_studio(admin, studio, name="beta-2", description="", cpus=1, memory_mb=1024, datasets=[])
    make_studio(workspace, name="quiet")  # no events: made without the lifecycle

    page = open_page(admin, width=width)
    missing = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    page.goto(workspace.get_absolute_url())
    page.get_by_role("link", name="Activity").click()
    timeline = page.locator("#timeline li")
    expect(timeline).to_have_count(3)
    page.get_by_label("Kind").select_option(label="Renamed")
    page.get_by_role("button", name="Filter").click()
    expect(timeline).to_have_count(1)
    expect(timeline.first).to_contain_text("beta-2: Renamed from beta to beta-2 by ada")
    assert "kind=renamed" in page.url
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
    assert not missing, missing  # the icon included
