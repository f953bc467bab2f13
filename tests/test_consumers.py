"""The presence WebSocket of the studio list and detail pages: who may listen, and what they hear."""

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.core import signing
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from studios import lifecycle, presence
from studios.models import Role, SessionConnection, StudioStatus

from .factories import make_studio, make_workspace

ROLES = [*Role.values, "outsider", "anonymous"]


@pytest.fixture
def studios(live_platform, workspace, members):
    # The outsider owns another workspace: a role there gives nothing here.
    members["outsider"].memberships.create(workspace=make_workspace(), role=Role.OWNER)
    return make_studio(workspace, name="first", author=members[Role.OWNER]), make_studio(workspace, name="second")


@pytest.fixture
def listen(live_platform):
    """Open a page's presence WebSocket as ``user`` (None: not logged in)."""

    def listen(user, path):
        headers = {"Cookie": f"sessionid={live_platform.session_cookie(user)}"} if user else {}
        url = live_platform.url.replace("http", "ws") + path
        return connect(url, additional_headers=headers, origin=live_platform.url)

    return listen


@pytest.mark.parametrize("role", ROLES)
def test_members_of_every_role_may_listen_and_nobody_else(studios, workspace, members, listen, role):
    user = None if role == "anonymous" else members[role]
    for path in (f"/ws/workspaces/{workspace.pk}/presence/", f"/ws/studios/{studios[0].pk}/presence/"):
        if role in Role.values:
            with listen(user, path) as page:
                assert f'id="avatars-{studios[0].pk}"' in page.recv(timeout=5)
        else:
            with pytest.raises(InvalidStatus) as refused:
                listen(user, path)
            assert refused.value.response.status_code == 403


def test_an_unknown_workspace_or_studio_is_refused(studios, members, listen):
    for path in ("/ws/workspaces/999999/presence/", "/ws/studios/999999/presence/"):
        with pytest.raises(InvalidStatus):
            listen(members[Role.OWNER], path)


def test_pages_hear_each_member_arrive_once_and_leave(studios, workspace, members, listen):
    first, second = studios
    mia = members[Role.CONNECT]
    opened = async_to_sync(presence.connection_opened)
    closed = async_to_sync(presence.connection_closed)
    with (
        listen(members[Role.VIEW], f"/ws/workspaces/{workspace.pk}/presence/") as whole_list,
        listen(members[Role.VIEW], f"/ws/studios/{second.pk}/presence/") as detail_of_second,
    ):
        for page in (whole_list, detail_of_second):
            assert "connected since" not in page.recv(timeout=5)  # the current avatars: nobody yet

        one = opened(mia, first.pk)
        arrived = whole_list.recv(timeout=2)
        assert f'id="avatars-{first.pk}"' in arrived and "connect, connected since" in arrived
        two = opened(mia, first.pk)  # a second tab: nothing changes for the pages
        closed(one)  # one tab still open: nothing changes either
        with pytest.raises(TimeoutError):
            whole_list.recv(timeout=0.5)
        closed(two)
        left = whole_list.recv(timeout=2)
        assert f'id="avatars-{first.pk}"' in left and "connected since" not in left
        # The detail page of the other studio heard nothing of this one.
        with pytest.raises(TimeoutError):
            detail_of_second.recv(timeout=0.5)
    assert not SessionConnection.objects.exists()


def test_pages_hear_each_change_of_a_studio_as_its_fragment_for_their_role(studios, workspace, members, listen):
    first, second = studios
    first.status = StudioStatus.STARTING
    first.save()
    with (
        listen(members[Role.VIEW], f"/ws/workspaces/{workspace.pk}/presence/") as viewers_list,
        listen(members[Role.MAINTAIN], f"/ws/workspaces/{workspace.pk}/presence/") as maintainers_list,
        listen(members[Role.VIEW], f"/ws/studios/{first.pk}/presence/") as detail,
        listen(members[Role.VIEW], f"/ws/studios/{second.pk}/presence/") as detail_of_second,
    ):
        for page in (viewers_list, maintainers_list, detail, detail_of_second):
            page.recv(timeout=5)  # the current avatars
        lifecycle.fail_studio(first.pk, "The session could not start.")
        row = viewers_list.recv(timeout=2)
        assert row.startswith(f'<tr id="studio-{first.pk}">') and ">errored</span>" in row
        assert ">Start</button>" not in row  # a viewer is offered no action
        row = maintainers_list.recv(timeout=2)
        assert ">errored</span>" in row and ">Start</button>" in row and 'name="csrfmiddlewaretoken"' in row
        panel = detail.recv(timeout=2)
        assert panel.startswith('<section id="studio-status"') and "The session could not start." in panel
        # Only what changed: one row, one panel.
        assert len(row.encode()) <= 5_000 and len(panel.encode()) <= 5_000
        with pytest.raises(TimeoutError):
            detail_of_second.recv(timeout=0.5)

        lifecycle.delete_studio(members[Role.MAINTAIN], first)
        assert viewers_list.recv(timeout=2) == f'<tr id="studio-{first.pk}" hx-swap-oob="delete"></tr>'
        assert "This studio was deleted." in detail.recv(timeout=2)


def test_a_page_whose_member_left_the_workspace_hears_no_more(studios, workspace, members, listen):
    first, _ = studios
    with listen(members[Role.VIEW], f"/ws/workspaces/{workspace.pk}/presence/") as page:
        page.recv(timeout=5)
        members[Role.VIEW].memberships.all().delete()
        lifecycle.change_studio(
            members[Role.MAINTAIN], first, name="renamed", description="", cpus=1, memory_mb=1024, datasets=[]
        )
        with pytest.raises(ConnectionClosed):
            page.recv(timeout=2)


def test_a_worker_whose_channel_layer_is_its_own_relays_through_the_web_process(
    studios, workspace, members, listen, live_platform, settings
):
    """The embedded defaults' Celery worker (``runstudios``) has an in-memory channel layer of its own: what the
    pages must hear goes through the web process, signed; anything else is refused."""
    first, _ = studios
    first.status = StudioStatus.STARTING
    first.save()
    settings.STUDIOS_PAGES_RELAY = f"{live_platform.url}/internal/pages-relay/"
    with listen(members[Role.VIEW], f"/ws/workspaces/{workspace.pk}/presence/") as page:
        page.recv(timeout=5)
        lifecycle.fail_studio(first.pk, "The session could not start.")
        assert ">errored</span>" in page.recv(timeout=2)
        forged = signing.dumps({"group": presence.workspace_group(workspace.pk), "message": {}}, salt="other")
        for body in (forged, "not signed"):
            assert httpx.post(settings.STUDIOS_PAGES_RELAY, content=body).status_code == 403
        with pytest.raises(TimeoutError):
            page.recv(timeout=0.5)
