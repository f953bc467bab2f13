"""The studio list in the browser: search and ordering as you type, kept in the address, a page at a time."""

import contextlib
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Error, expect

from studios.models import Role

from ..factories import make_member, make_studio, make_workspace
from ..live import wait_until

pytestmark = pytest.mark.browser


def query_of(page):
    return parse_qs(urlsplit(page.url).query)


def test_search_and_order_update_the_table_and_the_address_once(open_page, live_platform):
    workspace = make_workspace()
    member = make_member(workspace, Role.VIEW, username="vic")
    for n in range(55):
        make_studio(workspace, name=f"rnaseq-{n:02}")
    make_studio(workspace, name="variant-calling")
    page = open_page(member)
    page.goto(workspace.get_absolute_url())
    rows = page.locator("table.studios tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("variant-calling")  # newest first

    page.get_by_label("Order studios by").select_option(label="Name")
    expect(rows.first).to_contain_text("rnaseq-00")
    page.get_by_label("Search studios").fill("rnaseq")
    expect(page.get_by_text("1 to 50 of 55")).to_be_visible()
    assert query_of(page) == {"q": ["rnaseq"], "order": ["name"]}
    page.get_by_label("Search studios").fill("rnaseq-5")
    expect(rows).to_have_count(5)
    assert query_of(page) == {"q": ["rnaseq-5"], "order": ["name"]}  # one q, however many searches

    page.get_by_label("Search studios").fill("rnaseq")
    page.get_by_role("link", name="Next").click()
    expect(rows).to_have_count(5)
    expect(rows.first).to_contain_text("rnaseq-50")
    assert query_of(page) == {"q": ["rnaseq"], "order": ["name"], "page": ["2"]}
    expect(page.get_by_label("Search studios")).to_have_value("rnaseq")
    expect(page.get_by_label("Order studios by")).to_have_value("name")


def test_a_search_typed_while_the_list_refreshes_itself_is_not_overtaken_by_the_refresh(open_page, live_platform):
    workspace = make_workspace()
    member = make_member(workspace, Role.VIEW)
    for n in range(12):
        make_studio(workspace, name=f"rnaseq-{n:02}")
    make_studio(workspace, name="variant-calling")
    page = open_page(member)
    held = {}

    def hold(route):
        # Both htmx requests are held, as slow answers would be: the refresh the list asks for once its socket
        # opens (the page as it was), and the member's search, asked for meanwhile.
        if route.request.headers.get("hx-request"):
            held["search" if "q=" in route.request.url else "refresh"] = route
        else:
            route.continue_()

    def held_request(name):
        return wait_until(lambda: page.wait_for_timeout(50) or held.get(name), 10, f"the {name} to be asked for")

    page.route(f"**{workspace.get_absolute_url()}*", hold)
    page.goto(workspace.get_absolute_url())
    refresh = held_request("refresh")
    page.get_by_label("Search studios").fill("variant")
    search = held_request("search")
    # The refresh answers first, then the search.
    with contextlib.suppress(Error):  # the refresh was cancelled: nothing is left to answer
        refresh.continue_()
    refresh.request.response()  # its answer, if it was still awaited, has arrived...
    page.wait_for_timeout(200)  # ...and been swapped in
    search.continue_()
    rows = page.locator("table.studios tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("variant-calling")
