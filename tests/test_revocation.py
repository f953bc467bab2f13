"""Revocation closes what is open: a member whose access ends loses their kernel WebSockets within a second, and
their next request is refused; everyone else's stay open."""

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from django.db import connection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve

from studios import lifecycle
from studios.models import Membership, Role, StudioStatus
from studios.splice import UVICORN_WS
from studios.supervisor.supervisor import free_port

from .factories import make_member, make_running, make_session_cookie, make_studio, make_workspace
from .live import Browser, execute_request, wait_for_status, wait_until

# What the issue asks: an open socket of a member whose access ended is closed within this long.
CLOSED_WITHIN = 1.0


@pytest.fixture
def jupyter(live_platform, tmp_path):
    """A running JupyterLab studio, its owner, and a kernel in it."""
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    owner = make_member(workspace, Role.OWNER, username="olga")
    studio = make_studio(workspace, name="shared", author=owner, cpus=1, memory_mb=1024)
    lifecycle.start_studio(owner, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    kernel = Browser(live_platform, owner).session(studio).start_kernel()
    yield live_platform, studio, owner, kernel
    if Membership.objects.filter(user=owner).exists():
        studio.refresh_from_db()
        if studio.can_stop:
            lifecycle.stop_studio(owner, studio)
        wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


class Member:
    """A member's browser: their platform login, the session origin signed in, and a kernel WebSocket open."""

    def __init__(self, platform, studio, user, kernel):
        self.user = user
        self.browser = Browser(platform, user)
        self.session = self.browser.session(studio)
        self.socket = connect(
            f"ws://{self.session.host}/api/kernels/{kernel}/channels",
            address=("127.0.0.1", platform.session_port),
            additional_headers={"Cookie": self.session.cookie_header()},
            origin=self.session.origin,
        )

    def run(self, code):
        """Run ``code`` in the kernel over this member's socket; what it printed."""
        message, msg_id = execute_request(code)
        self.socket.send(message)
        while True:
            reply = json.loads(self.socket.recv(timeout=30))
            if reply.get("parent_header", {}).get("msg_id") == msg_id and reply["msg_type"] == "stream":
                return reply["content"]["text"].strip()

    def closed_within(self, seconds):
        """Whether the proxy closes the socket within ``seconds``; how long it took."""
        began = time.monotonic()
        try:
            while True:
                remaining = seconds - (time.monotonic() - began)
                if remaining <= 0:
                    return False, seconds
                self.socket.recv(timeout=remaining)  # kernel status messages may still arrive
        except TimeoutError:
            return False, seconds
        except ConnectionClosed:
            return True, time.monotonic() - began

    def refused(self):
        """The next HTTP requests: a page is sent to the platform, an API call refused."""
        page = self.session.http.get("/api/status")
        call = self.session.http.post("/api/kernels", json={"name": "python3"}, headers={"Origin": self.session.origin})
        return (
            page.status_code == 302
            and "/ticket/" in page.headers["location"]
            and call.status_code in (401, 403, 404, 409)
        )


def lower_role(member):
    membership = Membership.objects.get(user=member.user)
    membership.role = Role.VIEW
    membership.save()


def deactivate(member):
    member.user.is_active = False
    member.user.save()


def log_out(member):
    assert member.browser.post_form("/accounts/logout/").status_code == 302


REVOCATIONS = {
    "role lowered to view": lower_role,
    "removed from the workspace": lambda member: Membership.objects.get(user=member.user).delete(),
    "deactivated": deactivate,
    "logged out": log_out,
}


def test_each_way_an_access_ends_closes_that_members_kernel_sockets_within_a_second(jupyter):
    platform, studio, owner, kernel = jupyter
    olga = Member(platform, studio, owner, kernel)
    assert olga.run("x = 6 * 7; print(x)") == "42"
    timings = {}
    for what, revoke in REVOCATIONS.items():
        user = make_member(studio.workspace, Role.CONNECT)
        member = Member(platform, studio, user, kernel)
        assert member.run("print(x)") == "42"
        # The same member in another browser, which only a logout of the first leaves open.
        other_browser = Member(platform, studio, user, kernel)
        revoke(member)
        closed, timings[what] = member.closed_within(CLOSED_WITHIN)
        assert closed, f"{what}: the member's kernel socket was still open after {CLOSED_WITHIN} s"
        assert member.refused(), what
        if what == "logged out":
            assert other_browser.run("print(x + 1)") == "43"
            other_browser.socket.close()
        else:
            assert other_browser.closed_within(CLOSED_WITHIN)[0], what
        # Nobody else was touched.
        assert olga.run("print(x)") == "42"
    print("closed after", {what: f"{seconds * 1000:.0f} ms" for what, seconds in timings.items()})

    # A stop leaves the session open to the members in it while its pages save their documents
    # (``supervisor.notices``); once the session has ended, nothing of it is.
    colleague = Member(platform, studio, make_member(studio.workspace, Role.CONNECT), kernel)
    lifecycle.stop_studio(owner, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    for member in (olga, colleague):
        assert member.closed_within(CLOSED_WITHIN)[0], f"a stopped session left {member.user}'s kernel socket open"
        assert member.refused()


@pytest.fixture
def second_proxy(live_platform):
    """Another session proxy process beside the platform's, on the same database and Redis: as ``--workers`` or a
    second host runs it. Its port."""
    database = connection.settings_dict
    port = free_port()
    environment = dict(
        os.environ,
        DATABASE_URL=f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        STUDIOS_PUBLIC_URL=live_platform.url,
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "studios_project.session_asgi:application",
            f"--ws={UVICORN_WS}",
            "--port",
            str(port),
            "--lifespan",
            "off",
        ],
        env=environment,
    )

    def serves():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": "s1.localhost"}).status_code == 302
        except httpx.TransportError:
            return False

    try:
        wait_until(serves, 30, "the second session proxy to serve")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_role_lowered_closes_the_members_sockets_in_every_session_proxy_process_within_a_second(
    live_platform, second_proxy, workspace
):
    echo = serve(lambda websocket: [websocket.send(message) for message in websocket], "127.0.0.1", 0)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    studio = make_running(make_studio(workspace), f"http://127.0.0.1:{echo.socket.getsockname()[1]}")
    member = make_member(workspace, Role.CONNECT)
    cookie = {"Cookie": f"studios-session={make_session_cookie(studio, member)}"}
    sockets = []
    for port in (live_platform.session_port, second_proxy):
        host = f"s{studio.pk}.localhost:{port}"
        socket = connect(
            f"ws://{host}/k", address=("127.0.0.1", port), additional_headers=cookie, origin=f"http://{host}"
        )
        socket.send("ping")
        assert socket.recv(timeout=5) == "ping"
        sockets.append(socket)
    try:
        membership = Membership.objects.get(user=member)
        membership.role = Role.VIEW
        membership.save()
        began = time.monotonic()
        for port, socket in zip((live_platform.session_port, second_proxy), sockets, strict=True):
            with pytest.raises(ConnectionClosed):
                socket.recv(timeout=max(0.01, CLOSED_WITHIN - (time.monotonic() - began)))
            assert socket.close_code == 1008, port
    finally:
        echo.shutdown()


def test_without_redis_a_role_lowered_elsewhere_closes_each_of_the_members_sockets_within_a_second(
    live_platform, workspace, settings
):
    """The embedded run's in-memory channel layer hears no other process's announcement (a change made in the web
    process or the worker): the proxy asks the database again for its open sockets."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    echo = serve(lambda websocket: [websocket.send(message) for message in websocket], "127.0.0.1", 0)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    studio = make_running(make_studio(workspace), f"http://127.0.0.1:{echo.socket.getsockname()[1]}")
    member = make_member(workspace, Role.CONNECT)
    cookie = {"Cookie": f"studios-session={make_session_cookie(studio, member)}"}
    host = live_platform.session_host(studio)
    sockets = []
    for _ in range(2):  # a page's sockets: the same access
        socket = connect(
            f"ws://{host}/k",
            address=("127.0.0.1", live_platform.session_port),
            additional_headers=cookie,
            origin=f"http://{host}",
        )
        socket.send("ping")
        assert socket.recv(timeout=5) == "ping"
        sockets.append(socket)
    try:
        Membership.objects.filter(user=member).update(role=Role.VIEW)  # no announcement: as another process's change
        began = time.monotonic()
        for socket in sockets:
            with pytest.raises(ConnectionClosed):
                socket.recv(timeout=max(0.01, CLOSED_WITHIN - (time.monotonic() - began)))
            assert socket.close_code == 1008
    finally:
        echo.shutdown()
