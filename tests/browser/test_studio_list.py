"""The studio list in the browser: search and ordering as you type, kept in the address, a page at a time."""

from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from studios.models import Role

from ..factories import make_member, make_studio, make_workspace

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
    # The list refreshes itself once its socket is open: searching before that may be overtaken by the refresh.
    expect(page.locator("body[data-live=connected]")).to_be_attached()
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
