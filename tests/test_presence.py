"""Presence: members connected to a studio, from the proxy's open WebSockets, without ghosts."""

import socket
import threading
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve

from studios import presence
from studios.models import Event, Role, SessionConnection, Studio, StudioStatus, WebProcess
from studios.tasks import reconcile_sessions
from studios.templatetags.studios_extras import avatar_colour, contrast_with_white, initials

from .factories import make_member, make_running, make_session_cookie, make_studio, make_user
from .live import wait_until


def settled(predicate, what):
    """Presence is written by the web process's own threads: wait (briefly) for ``what``."""
    wait_until(predicate, 5, what, interval=0.02)


def connected(studio):
    return [member.username for member, _ in Studio.objects.get(pk=studio.pk).connected_members]


@pytest.fixture
def websocket_session(live_platform, workspace):
    """A running studio whose session echoes WebSocket messages, and a way to open sockets to it as a member."""

    def echo(websocket):
        for message in websocket:
            if message == "die":  # as a killed session does: no closing handshake
                websocket.socket.shutdown(socket.SHUT_RDWR)
                return
            websocket.send(message)

    server = serve(echo, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    studio = make_running(make_studio(workspace, name="shared"), f"http://127.0.0.1:{server.socket.getsockname()[1]}")

    def open_socket(user):
        host = live_platform.session_host(studio)
        return connect(
            f"ws://{host}/api/kernels/k/channels",
            address=("127.0.0.1", live_platform.session_port),
            additional_headers={"Cookie": f"studios-session={make_session_cookie(studio, user)}"},
            origin=f"http://{host}",
        )

    yield studio, open_socket
    server.shutdown()


def test_a_member_with_two_open_sockets_is_connected_once_until_the_last_closes(websocket_session, workspace, client):
    studio, open_socket = websocket_session
    mia = make_member(workspace, Role.CONNECT, username="mia")
    client.force_login(mia)
    with open_socket(mia) as first, open_socket(mia) as second:
        first.send("ping")
        assert first.recv(timeout=5) == "ping"
        settled(lambda: SessionConnection.objects.filter(studio=studio).exists(), "mia's connection recorded")
        (row,) = SessionConnection.objects.filter(studio=studio)  # one row for both sockets
        assert connected(studio) == ["mia"]
        assert "mia, connected since" in client.get(workspace.get_absolute_url()).content.decode()

        first.close()
        time.sleep(presence.LEAVE_AFTER_SECONDS + 0.3)
        assert list(SessionConnection.objects.filter(studio=studio)) == [row]
        assert connected(studio) == ["mia"]
        second.close()
        settled(lambda: not SessionConnection.objects.filter(studio=studio).exists(), "no connection left")
        assert "mia, connected since" not in client.get(workspace.get_absolute_url()).content.decode()


def test_a_reload_is_not_a_leave(websocket_session, workspace):
    """A page closing its sockets and opening them again a moment later (a reload) keeps its member connected: the
    record is not written again, nor the activity log."""
    studio, open_socket = websocket_session
    member = make_member(workspace, Role.CONNECT)
    with open_socket(member):
        settled(lambda: SessionConnection.objects.filter(studio=studio).exists(), "the connection recorded")
    (row,) = SessionConnection.objects.filter(studio=studio)
    time.sleep(0.3)  # the page reloading
    with open_socket(member) as again:
        again.send("ping")
        assert again.recv(timeout=5) == "ping"
        time.sleep(presence.LEAVE_AFTER_SECONDS + 0.3)
        assert [(r.pk, r.opened) for r in SessionConnection.objects.filter(studio=studio)] == [(row.pk, row.opened)]
        (event,) = Event.objects.filter(studio=studio, kind=Event.Kind.CONNECTED)
        assert event.ended is None
    settled(lambda: not SessionConnection.objects.filter(studio=studio).exists(), "the member to leave")
    assert Event.objects.get(pk=event.pk).ended is not None


def test_a_session_that_dies_closes_its_members_sockets_and_ends_their_presence(websocket_session, workspace):
    studio, open_socket = websocket_session
    with open_socket(make_member(workspace, Role.CONNECT)) as member_socket:
        settled(lambda: SessionConnection.objects.filter(studio=studio).exists(), "a connection recorded")
        member_socket.send("die")
        with pytest.raises(ConnectionClosed):
            member_socket.recv(timeout=5)
    settled(lambda: not SessionConnection.objects.filter(studio=studio).exists(), "no connection left")


def test_a_web_process_serving_sockets_keeps_a_heartbeat(websocket_session, workspace):
    _studio, open_socket = websocket_session
    with open_socket(make_member(workspace, Role.CONNECT)):
        settled(lambda: WebProcess.objects.filter(id=presence.PROCESS_ID).exists(), "the heartbeat row")
    assert timezone.now() - WebProcess.objects.get(id=presence.PROCESS_ID).heartbeat < timedelta(seconds=5)


@pytest.fixture
def ghost_and_live(workspace):
    """A studio with one member connected through a live web process and another through a dead one."""
    studio = make_studio(workspace, name="after-restart", status=StudioStatus.RUNNING)
    long_ago = timezone.now() - timedelta(minutes=5)
    WebProcess.objects.create(id="dead", heartbeat=long_ago, beating_since=long_ago)
    WebProcess.objects.create(id="alive", heartbeat=timezone.now(), beating_since=long_ago)
    for username, web_process in (("ghost", "dead"), ("gina", "alive")):
        user = make_member(workspace, Role.CONNECT, username=username)
        SessionConnection.objects.create(studio=studio, user=user, opened=long_ago, web_process=web_process)
    return studio


def test_connections_of_a_dead_web_process_are_forgotten_and_pages_are_told(ghost_and_live, workspace, client):
    layer = get_channel_layer()
    page = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(presence.workspace_group(workspace.pk), page)

    reconcile_sessions()

    assert connected(ghost_and_live) == ["gina"]
    assert not WebProcess.objects.filter(id="dead").exists()
    pushed = async_to_sync(layer.receive)(page)
    assert pushed["studio"] == ghost_and_live.pk
    assert "gina, connected since" in pushed["html"] and "ghost" not in pushed["html"]
    client.force_login(workspace.memberships.get(user__username="gina").user)
    assert "ghost, connected since" not in client.get(workspace.get_absolute_url()).content.decode()


def test_after_an_outage_no_process_is_judged_dead_before_one_has_beaten_for_three_beats(ghost_and_live, settings):
    """While the database was down nobody's heartbeat was written: "alive" is back first, the dead one may be
    live and about to beat."""
    WebProcess.objects.filter(id="alive").update(beating_since=timezone.now())
    presence.forget_dead_processes()
    assert connected(ghost_and_live) == ["ghost", "gina"]
    three_beats_ago = timezone.now() - timedelta(seconds=3 * settings.STUDIOS_HEARTBEAT_SECONDS + 1)
    WebProcess.objects.filter(id="alive").update(beating_since=three_beats_ago)
    presence.forget_dead_processes()
    assert connected(ghost_and_live) == ["gina"]


def test_the_heartbeat_writes_again_what_its_process_holds(websocket_session, workspace, settings):
    """An open or a close whose write failed (the database was down) is repaired by the next heartbeat."""
    settings.STUDIOS_HEARTBEAT_SECONDS = 1
    studio, open_socket = websocket_session
    with open_socket(make_member(workspace, Role.CONNECT, username="mia")):
        settled(lambda: connected(studio) == ["mia"], "mia alone connected")
        SessionConnection.objects.filter(studio=studio).delete()  # as if its open had not been written
        settled(lambda: connected(studio) == ["mia"], "mia alone connected")
        olaf = make_member(workspace, Role.CONNECT, username="olaf")
        SessionConnection.objects.create(studio=studio, user=olaf, web_process=presence.PROCESS_ID)  # a lost close
        settled(lambda: connected(studio) == ["mia"], "mia alone connected")


def test_a_connection_opened_just_now_is_kept_before_its_process_first_beats(workspace):
    studio = make_studio(workspace, status=StudioStatus.RUNNING)
    SessionConnection.objects.create(studio=studio, user=make_member(workspace, Role.CONNECT), web_process="booting")
    presence.forget_dead_processes()
    assert SessionConnection.objects.filter(studio=studio).exists()


def test_avatars_have_readable_distinct_colours_and_initials(db):
    usernames = ["owner", "admin", "maintain", "launch", "connect", "view", "mia", "olaf", "jane.doe", "x"]
    colours = [avatar_colour(name) for name in usernames]
    assert len(set(colours)) == len(usernames)
    for colour in colours:
        rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        assert contrast_with_white(rgb) >= 4.5, colour
    assert avatar_colour("mia") == avatar_colour("mia")
    assert [initials(make_user(name)) for name in ("jane.doe", "mia", "x")] == ["JD", "MI", "X"]


def test_initials_prefer_the_full_name(db):
    user = make_user("jd42")
    user.first_name, user.last_name = "Ada", "Lovelace"
    assert initials(user) == "AL"


def test_what_a_member_sends_over_a_socket_is_the_studios_last_activity(websocket_session, workspace, settings):
    studio, open_socket = websocket_session
    settings.STUDIOS_ACTIVITY_WRITE_SECONDS = 0
    mia = make_member(workspace, Role.CONNECT, username="mia")
    with open_socket(mia) as socket_:
        settled(
            lambda: Studio.objects.get(pk=studio.pk).last_activity is not None, "activity recorded"
        )  # opening it is activity
        opened = Studio.objects.get(pk=studio.pk).last_activity
        time.sleep(0.05)
        socket_.send("ping")
        assert socket_.recv(timeout=5) == "ping"
        settled(lambda: Studio.objects.get(pk=studio.pk).last_activity > opened, "later activity recorded")
    assert Studio.objects.get(pk=studio.pk).last_active_user == mia


def test_a_members_connections_to_a_session_are_one_event_from_the_first_open_to_the_last_close(
    websocket_session, workspace
):
    studio, open_socket = websocket_session
    mia = make_member(workspace, Role.CONNECT, username="mia")

    def event():
        return Event.objects.filter(kind=Event.Kind.CONNECTED, studio=studio, actor=mia).first()

    with open_socket(mia), open_socket(mia):
        settled(lambda: event() is not None, "mia's connection logged")
        first = event()
        assert (first.session, first.ended) == (studio.session, None)
    settled(lambda: event().ended is not None, "mia's connection ended")
    with open_socket(mia):  # a reload: the same connection goes on
        settled(lambda: event().ended is None, "mia's connection resumed")
    settled(lambda: event().ended is not None, "mia's connection ended again")
    assert Event.objects.filter(kind=Event.Kind.CONNECTED).count() == 1
    assert event().at == first.at and event().duration > timedelta(0)


def test_the_connections_of_a_dead_web_process_end_in_the_log(ghost_and_live):
    for connection in SessionConnection.objects.filter(studio=ghost_and_live):
        Event.objects.create(
            workspace_id=ghost_and_live.workspace_id,
            studio=ghost_and_live,
            studio_name=ghost_and_live.name,
            kind=Event.Kind.CONNECTED,
            actor=connection.user,
            at=connection.opened,
        )
    reconcile_sessions()
    ended = dict(Event.objects.values_list("actor__username", "ended"))
    assert ended["ghost"] is not None and ended["gina"] is None
