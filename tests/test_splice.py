"""WebSockets through the session proxy, spliced (``studios.splice``): the session's answer to the handshake and its
frames reach the browser as the session sent them, except what a session may not do to a member's browser, and a
close of the proxy's own lands between two frames."""

import contextlib
import hashlib
import logging
import socket
import struct
import threading
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve
from websockets.utils import accept_key

from studios import splice
from studios.models import Membership, Role, Studio

from .factories import make_member, make_running, make_session_cookie, make_studio
from .live import wait_until

MB = 2**20


class HandWrittenSession:
    """A session's WebSocket endpoint whose answer to the handshake and whose frames are written byte by byte by
    ``serve_one(connection)``, in a thread of its own, for each connection."""

    def __init__(self, serve_one, answer_headers=b""):
        self.serve_one, self.answer_headers = serve_one, answer_headers
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(connection,), daemon=True).start()

    def answer(self, connection):
        with connection:
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            connection.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n" + self.answer_headers + b"\r\n"
            )
            self.serve_one(connection)

    def close(self):
        self.listener.close()


def frame_head(opcode, length):
    """A server's frame header (unmasked, final) for a payload of ``length`` bytes."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 2**16:
        return bytes((0x80 | opcode, 126)) + struct.pack("!H", length)
    return bytes((0x80 | opcode, 127)) + struct.pack("!Q", length)


@pytest.fixture
def member_socket(live_platform, workspace):
    """Opens a member's WebSocket to a studio whose session is ``url``; the studio and the member."""
    sockets = []

    def open_socket(url, role=Role.CONNECT):
        studio = make_running(make_studio(workspace, name=f"s{len(sockets)}"), url)
        user = make_member(workspace, role)
        host = live_platform.session_host(studio)
        member = connect(
            f"ws://{host}/api/kernels/k/channels",
            address=("127.0.0.1", live_platform.session_port),
            additional_headers={"Cookie": f"studios-session={make_session_cookie(studio, user)}"},
            origin=f"http://{host}",
            max_size=None,
        )
        sockets.append(member)
        return member, studio, user

    yield open_socket
    for member in sockets:
        member.close()


@pytest.fixture
def proxy_log(caplog):
    caplog.set_level(logging.INFO, logger="studios.proxy")
    return caplog


def revoked(proxy_log, user):
    return f"access of user={user} to studio" in proxy_log.text


def test_an_access_ending_mid_frame_lets_that_frame_through_whole_then_closes_with_1008(member_socket, proxy_log):
    """The browser's stream stays valid: it gets the frame the session had begun, then the proxy's close, and
    nothing the session sends after."""
    payload = bytes(range(256)) * (4 * MB // 256)
    half_sent, go_on = threading.Event(), threading.Event()

    def session(connection):
        connection.sendall(frame_head(0x2, len(payload)) + payload[: len(payload) // 2])
        half_sent.set()
        go_on.wait(10)
        connection.sendall(payload[len(payload) // 2 :] + frame_head(0x1, 5) + b"after")
        time.sleep(2)

    endpoint = HandWrittenSession(session)
    member, _studio, user = member_socket(endpoint.url)
    assert half_sent.wait(5)
    membership = Membership.objects.get(user=user)
    membership.role = Role.VIEW
    membership.save()
    wait_until(lambda: revoked(proxy_log, user), 5, "the proxy to end the member's access", interval=0.02)
    go_on.set()
    assert hashlib.sha256(member.recv(timeout=5)).digest() == hashlib.sha256(payload).digest()
    with pytest.raises(ConnectionClosed):
        member.recv(timeout=5)
    assert member.close_code == 1008
    endpoint.close()


def test_an_access_ending_mid_frame_that_never_ends_cuts_the_connection_within_a_second(member_socket, proxy_log):
    def session(connection):
        connection.sendall(frame_head(0x2, MB) + bytes(1000))
        time.sleep(10)

    endpoint = HandWrittenSession(session)
    member, _studio, user = member_socket(endpoint.url)
    time.sleep(0.2)
    Membership.objects.get(user=user).delete()
    began = time.monotonic()
    with pytest.raises(ConnectionClosed):
        member.recv(timeout=5)
    assert time.monotonic() - began < 1.0
    assert member.close_code == 1006  # no close frame could be written inside the session's frame
    endpoint.close()


def test_a_session_cannot_set_the_proxys_own_cookies_when_it_answers_a_websocket(member_socket):
    def session(connection):
        time.sleep(5)

    endpoint = HandWrittenSession(
        session,
        answer_headers=b"Set-Cookie: studios-session=another-members; Path=/\r\n"
        b"Set-Cookie: studios-state=known-to-the-session; Path=/\r\n"
        b"Set-Cookie: _xsrf=from-session; Path=/\r\n"
        b"Content-Security-Policy: frame-ancestors *\r\n",
    )
    member, _studio, _user = member_socket(endpoint.url)
    headers = member.response.headers
    assert headers.get_all("Set-Cookie") == ["_xsrf=from-session; Path=/"]
    assert "frame-ancestors 'self'" in headers.get_all("Content-Security-Policy")
    endpoint.close()


def test_a_session_refusing_a_websocket_is_a_502_for_the_browser(member_socket):
    listener = socket.create_server(("127.0.0.1", 0))

    def refuse():
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            time.sleep(2)

    threading.Thread(target=refuse, daemon=True).start()
    with pytest.raises(websockets.InvalidStatus) as refused:
        member_socket(f"http://127.0.0.1:{listener.getsockname()[1]}")
    assert refused.value.response.status_code == 502
    assert b"The session did not answer" in refused.value.response.body
    listener.close()


def test_a_members_pongs_are_not_use_of_the_studio_but_the_frames_they_send_are(member_socket, settings):
    """An open page answers the session's pings for as long as it is open: that must not keep an idle studio
    from stopping."""
    settings.STUDIOS_ACTIVITY_WRITE_SECONDS = 0

    def echo(websocket):
        for message in websocket:
            websocket.send(message)

    server = serve(echo, "127.0.0.1", 0, ping_interval=0.1, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    member, studio, _user = member_socket(f"http://127.0.0.1:{server.socket.getsockname()[1]}")

    def last_activity():
        return Studio.objects.get(pk=studio.pk).last_activity

    wait_until(lambda: last_activity() is not None, 5, "the open to count as use", interval=0.02)
    opened = last_activity()
    (session_side,) = server.connections
    wait_until(lambda: session_side.latency > 0, 5, "the session's pings to be answered", interval=0.02)
    time.sleep(0.5)  # several more pings and pongs
    assert last_activity() == opened
    member.send("hello")
    assert member.recv(timeout=5) == "hello"
    wait_until(lambda: last_activity() > opened, 5, "the member's frame to count as use", interval=0.02)
    server.shutdown()


def test_large_messages_pass_intact_both_ways(member_socket):
    def echo(websocket):
        for message in websocket:
            websocket.send(message)

    server = serve(echo, "127.0.0.1", 0, max_size=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    member, _studio, _user = member_socket(f"http://127.0.0.1:{server.socket.getsockname()[1]}")
    for size in (0, 125, 126, 2**16, 32 * MB):
        message = bytes(range(256)) * (size // 256) + bytes(size % 256)
        member.send(message)
        assert member.recv(timeout=30) == message, size
    server.shutdown()


def hostile_answer(connection, endless):
    connection.recv(4096)
    if endless:  # an answer whose head never ends
        with contextlib.suppress(OSError):  # the proxy hangs up
            connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
            for _ in range(1024):
                connection.sendall(b"X-Padding: " + b"a" * 1000 + b"\r\n")
    time.sleep(15)


@pytest.mark.parametrize("endless", [True, False], ids=["head never ending", "no answer"])
def test_a_session_that_never_finishes_its_answer_or_never_answers_is_a_502(member_socket, monkeypatch, endless):
    """A hostile session cannot hold the member's handshake (nor the proxy's memory) for as long as it likes."""
    monkeypatch.setattr(splice, "ANSWER_SECONDS", 1.0)
    listener = socket.create_server(("127.0.0.1", 0))

    def answer():
        connection, _ = listener.accept()
        with connection:
            hostile_answer(connection, endless)

    threading.Thread(target=answer, daemon=True).start()
    began = time.monotonic()
    with pytest.raises(websockets.InvalidStatus) as refused:
        member_socket(f"http://127.0.0.1:{listener.getsockname()[1]}")
    took = time.monotonic() - began
    assert refused.value.response.status_code == 502
    assert b"The session did not answer" in refused.value.response.body
    # The head is cut at its limit, long before the time for an answer runs out; silence waits that time out.
    assert took < 0.9 if endless else 0.9 < took < 5
    listener.close()
