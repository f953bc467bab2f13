"""The warning before a lifespan runs out, as members see it on the studio's page: pushed, with one click to keep
the studio running for those allowed to extend it."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from studios import tasks
from studios.models import Role, Session

from ..factories import make_member, make_running, make_studio
from ..live import wait_until

pytestmark = pytest.mark.browser


def open_listening(open_page, user, url):
    """A page at ``url`` whose pushed-updates socket has said hello (so it hears what is pushed next)."""
    page = open_page(user)
    frames = []
    page.on("websocket", lambda socket: socket.on("framereceived", lambda payload: frames.append(payload)))
    page.goto(url)
    wait_until(lambda: page.evaluate("1") and frames, 10, "the page's socket to open")
    return page


def test_members_see_the_warning_pushed_and_a_maintainer_keeps_the_studio_running_in_one_click(
    live_platform, workspace, open_page
):
    maintainer = make_member(workspace, Role.MAINTAIN)
    colleague = make_member(workspace, Role.CONNECT)
    studio = make_studio(workspace, name="rnaseq", author=maintainer)
    stops_at = timezone.now() + timedelta(minutes=30)
    make_running(studio, started=stops_at - timedelta(hours=8), stops_at=stops_at)
    pages = {user: open_listening(open_page, user, studio.get_absolute_url()) for user in (maintainer, colleague)}
    for page in pages.values():
        expect(page.locator(f"#lifespan-{studio.pk}")).to_contain_text("29 minutes left of 8 h")
        expect(page.get_by_role("alert")).to_have_count(0)

    # Twenty minutes later, the next tick of Celery beat warns them (a worker runs it).
    Session.objects.filter(pk=studio.session_id).update(stops_at=timezone.now() + timedelta(minutes=10))
    tasks.stop_due_studios.delay()
    keep = pages[maintainer].get_by_role("button", name="Keep it running 1 more hour")
    for page in pages.values():
        expect(page.get_by_role("alert")).to_contain_text("Stops in 9 minutes: its lifespan of 8 h runs out at")
    expect(pages[colleague].get_by_role("button", name="Keep it running 1 more hour")).to_be_hidden()

    keep.click()
    expect(pages[maintainer].locator(f"#lifespan-{studio.pk}")).to_contain_text("1 hour, 9 minutes left of 9 h")
    # Gone from every page showing it.
    for page in pages.values():
        expect(page.get_by_role("alert")).to_have_count(0)
    expect(pages[colleague].locator(f"#lifespan-{studio.pk}")).to_contain_text("1 hour, 9 minutes left of 9 h")
    assert Session.objects.get(pk=studio.session_id).stops_at > timezone.now() + timedelta(minutes=69)
