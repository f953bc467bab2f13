"""Real sessions: JupyterLab started by a real Celery worker, reached through the real proxy."""

import asyncio
import os
import signal
from urllib.parse import unquote

import httpx
import pytest
import websockets

from studios.models import Event, Role, StopReason, StudioStatus
from studios.tasks import reconcile_sessions

from .factories import make_dataset, make_member, make_running, make_studio
from .live import START_TIMEOUT, Browser, execute, pid_alive, wait_for_status, wait_until


@pytest.fixture
def session_world(live_platform, tmp_path):
    from .factories import make_workspace

    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    users = {role: make_member(workspace, role) for role in (Role.MAINTAIN, Role.CONNECT, Role.VIEW)}
    users["outsider"] = make_member(make_workspace(), Role.OWNER)
    (tmp_path / "reads").mkdir()
    (tmp_path / "reads" / "sample.txt").write_text("ACGT\n")
    dataset = make_dataset(workspace, "reads", str(tmp_path / "reads"))
    studio = make_studio(
        workspace, name="live", author=users[Role.MAINTAIN], datasets=[dataset], cpus=1, memory_mb=1024
    )
    return live_platform, studio, users


def test_a_real_jupyterlab_session_end_to_end(session_world):
    platform, studio, users = session_world
    maintainer = Browser(platform, users[Role.MAINTAIN])

    response = maintainer.post_form(f"/studios/{studio.pk}/start/")
    assert response.status_code == 302
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    pulled = ["Pulling image"] if studio.session.handle.get("image") else []
    assert [step["name"] for step in studio.startup_steps] == [
        "Provisioning compute",
        *pulled,
        "Mounting data",
        "Starting JupyterLab",
    ]
    assert [step["state"] for step in studio.startup_steps] == ["succeeded"] * (3 + len(pulled))
    token = studio.session.token
    supervisor_pid = studio.session.handle["pid"]
    endpoint_port = int(studio.session.endpoint.rsplit(":", 1)[1])

    # HTTP through the proxy on the studio's own origin: the lab page and the REST API, never the session's token.
    session = maintainer.session(studio)
    lab = session.http.get("/lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    assert token not in lab.text and token not in str(lab.headers)
    contents = session.http.get("/api/contents/data/reads")
    assert [item["name"] for item in contents.json()["content"]] == ["sample.txt"]

    # A kernel over the proxied WebSocket, which stays open while idle (longer than Redis's read timeout).
    assert asyncio.run(execute(platform, maintainer, studio, "print(6 * 7)", idle=6)).strip() == "42"

    # Another member with the connect role opens the same session by its URL.
    colleague = Browser(platform, users[Role.CONNECT])
    assert colleague.session(studio).http.get("/api/status").status_code == 200

    # Stop: stopping, then stopped, and the processes are gone.
    assert maintainer.post_form(f"/studios/{studio.pk}/stop/").status_code == 302
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=60)
    assert not pid_alive(supervisor_pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{endpoint_port}/", timeout=2)
    gone = session.http.get("/lab")
    assert gone.status_code == 302 and f"/studios/{studio.pk}/ticket/?next=%2Flab&browser=" in gone.headers["location"]
    page = maintainer.http.get(gone.headers["location"])
    assert page.status_code == 409 and "is stopped" in page.text

    # The activity log has it all, with who did it and how long it took.
    session = studio.session
    events = {event.kind: event for event in studio.events.filter(session=session).exclude(kind=Event.Kind.CONNECTED)}
    assert set(events) == {Event.Kind.STARTED, Event.Kind.RUNNING, Event.Kind.STOPPED}
    assert events[Event.Kind.STARTED].actor == events[Event.Kind.STOPPED].actor == users[Role.MAINTAIN]
    assert events[Event.Kind.STARTED].details == {"cpus": 1, "memory_mb": 1024, "checkpoint": ""}
    assert 0 < events[Event.Kind.RUNNING].seconds < START_TIMEOUT
    stop = events[Event.Kind.STOPPED]
    assert stop.reason == StopReason.USER and stop.ended == session.ended and stop.duration.total_seconds() > 0
    connections = studio.events.filter(kind=Event.Kind.CONNECTED, session=session)
    assert {event.actor for event in connections} == {users[Role.MAINTAIN]}  # the kernel's WebSocket
    assert all(event.ended is not None for event in connections)


def test_proxy_refuses_view_role_non_members_and_anonymous(session_world):
    platform, studio, users = session_world
    make_running(studio)
    viewer = Browser(platform, users[Role.VIEW]).session(studio, "/lab")
    assert not viewer.granted
    assert viewer.refusal.status_code == 403 and "You need the connect role" in viewer.refusal.text
    outsider = Browser(platform, users["outsider"]).session(studio, "/lab")
    assert not outsider.granted and outsider.refusal.status_code == 404
    anonymous = Browser(platform).session(studio, "/lab")
    assert not anonymous.granted and anonymous.refusal.status_code == 302
    ticket_page = f"/studios/{studio.pk}/ticket/?next=%2Flab&browser="
    assert unquote(anonymous.refusal.headers["location"]).startswith(f"/accounts/login/?next={ticket_page}")
    # Nor does a session origin answer anyone without its own cookie.
    assert anonymous.http.get("/lab").status_code == 302


def test_proxy_refuses_websockets_below_connect_role(session_world):
    platform, studio, users = session_world
    make_running(studio)

    async def attempt(session):
        async with session.websocket("/api/events/subscribe"):
            pass

    connector = Browser(platform, users[Role.CONNECT]).session(studio)
    for who in (Role.VIEW, "outsider"):
        # Their platform login is no use on the session origin, nor is a colleague's cookie once they lose the role.
        session = Browser(platform, users[who]).session(studio)
        with pytest.raises(websockets.InvalidStatus) as refused:
            asyncio.run(attempt(session))
        assert refused.value.response.status_code == 403
    users[Role.CONNECT].memberships.update(role=Role.VIEW)
    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(attempt(connector))
    assert refused.value.response.status_code == 403


def test_a_killed_session_makes_the_studio_errored(session_world):
    platform, studio, users = session_world
    Browser(platform, users[Role.MAINTAIN]).post_form(f"/studios/{studio.pk}/start/")
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    os.killpg(studio.session.handle["pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(studio.session.handle["pid"]), 10, "the killed session's process to end")
    reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.ERRORED
    assert "ended unexpectedly" in studio.status_reason
    assert not studio.active_mounts.exists()
