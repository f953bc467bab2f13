"""The connect proxy against a real upstream HTTP server: what it forwards, strips and streams."""

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import websockets
from websockets.sync.client import connect

from studios import lifecycle
from studios.models import Role, Studio, StudioStatus

from .factories import make_member, make_running, make_studio
from .live import Browser, wait_until


class EchoSession(BaseHTTPRequestHandler):
    """Answers every request with what it received; /set-cookie also sets a cookie, /framable asks to be framed by
    anyone."""

    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "connection": self.client_address[1],
            }
        ).encode()
        if self.path.endswith("/big"):
            answer = b"x" * (3 * 2**20)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if self.path.endswith("/set-cookie"):
            self.send_header("Set-Cookie", "_xsrf=from-session; Path=/")
        if self.path.endswith("/set-proxy-cookies"):
            self.send_header("Set-Cookie", "studios-session=another-members; Path=/")
            self.send_header("Set-Cookie", "studios-state=known-to-the-session; Path=/")
        if self.path.endswith("/framable"):
            self.send_header("Content-Security-Policy", "frame-ancestors *")
            self.send_header("X-Frame-Options", "ALLOWALL")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = handle_any

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_studio(live_platform, workspace):
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoSession)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    studio = make_running(
        make_studio(workspace, name="echo"), f"http://127.0.0.1:{server.server_address[1]}", "the-session-token"
    )
    yield live_platform, studio
    server.shutdown()


def client_for(platform, user, studio, **cookies):
    """A member's client on the studio's session origin, signed in by the ticket round trip."""
    session = Browser(platform, user).session(studio)
    for name, value in cookies.items():
        session.http.cookies.set(name, value)
    return session.http


def test_proxy_adds_the_token_and_user_and_strips_platform_cookies(echo_studio, workspace):
    platform, studio = echo_studio
    user = make_member(workspace, Role.CONNECT, username="carol")
    http = client_for(
        platform, user, studio, sessionid="platform-login", csrftoken="platform-csrf", _xsrf="session-xsrf"
    )
    response = http.get(
        "/api/contents/a%20b?x=1&y=%2F",
        headers={"X-Studios-Session-Token": "forged", "X-Studios-User": "mallory"},
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == "/api/contents/a%20b?x=1&y=%2F"
    assert seen["headers"]["x-studios-session-token"] == "the-session-token"
    assert seen["headers"]["x-studios-user"] == "carol"
    assert "sessionid" not in seen["headers"]["cookie"]
    assert "csrftoken" not in seen["headers"]["cookie"]
    assert "studios-session" not in seen["headers"]["cookie"]
    assert "_xsrf=session-xsrf" in seen["headers"]["cookie"]
    assert "the-session-token" not in str(response.headers)


def test_request_and_response_bodies_stream_through_intact(echo_studio, workspace):
    platform, studio = echo_studio
    http = client_for(platform, make_member(workspace, Role.CONNECT), studio)
    upload = bytes(range(256)) * 8192  # 2 MB
    response = http.put("/api/contents/upload", content=upload)
    assert response.json()["body_sha256"] == hashlib.sha256(upload).hexdigest()
    assert response.json()["method"] == "PUT"
    assert len(http.get("/big").content) == 3 * 2**20


class ImpatientEchoSession(EchoSession):
    """Closes a kept-alive connection after a quarter of a second without a request."""

    timeout = 0.25


def test_requests_go_on_over_connections_the_session_closes_and_after_a_head(live_platform, workspace):
    """The proxy keeps its connections to a session alive between requests (a new connection for each would cost
    more than the rest of the proxy's work): one the session has closed meanwhile, or one that carried a HEAD (whose
    answer has no body), must not fail the next request."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImpatientEchoSession)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    studio = make_running(make_studio(workspace, name="impatient"), f"http://127.0.0.1:{server.server_address[1]}")
    http = client_for(live_platform, make_member(workspace, Role.CONNECT), studio)
    try:
        for _ in range(3):
            head = http.head("/big")
            assert head.status_code == 200 and head.headers["content-length"] == str(3 * 2**20) and not head.content
            first, second = http.get("/api/status").json(), http.get("/api/status").json()
            assert first["method"] == "GET" and second["connection"] == first["connection"]
            time.sleep(0.4)
            assert http.get("/api/status").json()["method"] == "GET"
    finally:
        server.shutdown()


def test_a_session_cannot_set_the_proxys_own_cookies(echo_studio, workspace):
    """Otherwise a session would sign a member's browser in to someone else's access, or plant the state a ticket
    of its choosing is bound to."""
    platform, studio = echo_studio
    http = client_for(platform, make_member(workspace, Role.CONNECT, username="victor"), studio)
    answer = http.get("/set-proxy-cookies")
    assert answer.status_code == 200 and "set-cookie" not in answer.headers
    assert http.get("/api/status").json()["headers"]["x-studios-user"] == "victor"
    assert "_xsrf=from-session" in http.get("/set-cookie").headers["set-cookie"]


def test_a_sessions_pages_may_be_framed_by_its_own_origin_only_whatever_the_session_says(echo_studio, workspace):
    """Another site's page framing the session's (to take a member's clicks) is refused by the browser: every
    policy a response carries is enforced, and the proxy's allows the session origin's own frames only."""
    platform, studio = echo_studio
    http = client_for(platform, make_member(workspace, Role.CONNECT), studio)
    for path in ("/lab", "/framable"):
        policies = http.get(path).headers.get_list("content-security-policy")
        assert "frame-ancestors 'self'" in policies, (path, policies)


def test_a_cookie_the_session_sets_reaches_only_that_browser(echo_studio, workspace):
    platform, studio = echo_studio
    first = client_for(platform, make_member(workspace, Role.CONNECT), studio)
    second = client_for(platform, make_member(workspace, Role.CONNECT), studio)
    response = first.get("/set-cookie")
    assert response.headers["set-cookie"].startswith("_xsrf=from-session")
    seen = second.get("/api/status").json()
    assert "from-session" not in seen["headers"].get("cookie", "")


def test_members_requests_are_the_studios_last_activity_written_at_most_once_a_minute(echo_studio, workspace, settings):
    platform, studio = echo_studio
    carol, dave = (
        make_member(workspace, Role.CONNECT, username="carol"),
        make_member(workspace, Role.CONNECT, username="dave"),
    )
    assert studio.last_activity is None
    client_for(platform, carol, studio).get("/api/status")
    studio.refresh_from_db()
    first = studio.last_activity
    assert first is not None and studio.last_active_user == carol
    client_for(platform, dave, studio).get("/api/status")  # within the minute: not written again
    studio.refresh_from_db()
    assert (studio.last_activity, studio.last_active_user) == (first, carol)

    settings.STUDIOS_ACTIVITY_WRITE_SECONDS = 0
    client_for(platform, dave, studio).get("/api/status")
    studio.refresh_from_db()
    assert studio.last_activity > first and studio.last_active_user == dave
    page = Browser(platform, carol).http.get(studio.get_absolute_url()).text
    assert re.search(
        r'id="last-activity">Last used <time[^>]*>(now|a second ago|\d+ seconds ago)</time> by dave\.', page
    )


def test_an_unreachable_session_gets_a_clear_error(live_platform, workspace):
    studio = make_studio(workspace, name="gone")
    make_running(studio)
    http = client_for(live_platform, make_member(workspace, Role.CONNECT), studio)
    response = http.get("/lab")
    assert response.status_code == 502
    assert "did not answer" in response.text


def test_a_websocket_to_an_unreachable_session_is_refused_with_502_not_403(live_platform, workspace):
    """A browser shows a refused handshake only by its status: 403 would read as a permission problem."""
    studio = make_running(make_studio(workspace, name="gone"))
    session = Browser(live_platform, make_member(workspace, Role.CONNECT)).session(studio)
    with pytest.raises(websockets.InvalidStatus) as refused:
        connect(
            f"ws://{session.host}/api/kernels/k/channels",
            address=("127.0.0.1", live_platform.session_port),
            additional_headers={"Cookie": session.cookie_header()},
            origin=session.origin,
        )
    assert refused.value.response.status_code == 502
    assert b"The session did not answer" in refused.value.response.body


def test_members_in_a_session_reach_it_while_it_stops_and_nobody_once_it_has_ended(echo_studio, workspace):
    """While a session stops, its pages save their documents through the proxy (``supervisor.notices``)."""
    platform, studio = echo_studio
    session = Browser(platform, make_member(workspace, Role.CONNECT)).session(studio)
    Studio.objects.filter(pk=studio.pk).update(status=StudioStatus.STOPPING)
    saved = session.http.put("/api/contents/analysis.ipynb", content=b"{}")
    assert saved.status_code == 200 and saved.json()["method"] == "PUT"
    assert lifecycle.session_stopped(studio.pk)
    wait_until(lambda: session.http.get("/lab").status_code == 302, 5, "the ended session to send its members away")
    assert session.http.put("/api/contents/analysis.ipynb", content=b"{}").status_code == 409


def test_a_stopped_studios_link_tells_its_status_and_offers_start_to_maintainers(live_platform, workspace):
    """The session origin sends the browser to the platform, which says why there is no session."""
    studio = make_studio(workspace, name="paused")
    colleague = Browser(live_platform, make_member(workspace, Role.CONNECT))
    link = colleague.session(studio, "/lab")
    assert not link.granted
    page = link.refusal
    assert page.status_code == 409 and "paused is stopped" in page.text
    assert ">Start</button>" not in page.text and "Ask a member with the maintain role" in page.text

    maintainer = Browser(live_platform, make_member(workspace, Role.MAINTAIN))
    page = maintainer.session(studio, "/lab").refusal
    assert page.status_code == 409 and ">Start</button>" in page.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    started = maintainer.http.post(f"/studios/{studio.pk}/start/", data={"csrfmiddlewaretoken": token})
    assert started.status_code == 302 and started.headers["location"] == studio.get_absolute_url()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING
    # While it starts, the link waits for it, and opens the session once it runs.
    waiting = maintainer.session(studio, "/lab").refusal
    assert waiting.status_code == 409 and 'http-equiv="refresh"' in waiting.text
    lifecycle.fail_studio(studio.pk, "The test is over.")  # the launch, if it ran, ends its own session
