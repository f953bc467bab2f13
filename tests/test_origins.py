"""Each studio's session on an origin of its own: routing by Host, the ticket round trip, and what is refused."""

import threading
from datetime import timedelta
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import websockets
from django.core import signing
from websockets.sync.client import connect
from websockets.sync.server import serve

from studios import origins
from studios.models import Role, SessionAccess

from .factories import make_member, make_running, make_session_cookie, make_studio
from .live import Browser, SessionClient
from .test_proxy import EchoSession


@pytest.fixture
def echo(live_platform, workspace):
    """Two running studios whose sessions echo what they receive, over HTTP and WebSocket."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoSession)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    studios = [make_running(make_studio(workspace, name=name), endpoint) for name in ("first", "second")]
    yield live_platform, *studios
    server.shutdown()


def ticket_of(browser, session, next_path="/"):
    """The session origin's ticket address the platform sends ``browser`` to, when ``session`` (a client of the
    same browser on the session origin) asked for ``next_path``."""
    answer = browser.http.get(session.ticket_page(next_path))
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def redeem(session, location, **options):
    """Open the ticket address on ``session``'s origin."""
    return session.http.get(urlsplit(location).path + "?" + urlsplit(location).query, **options)


def same_browser(session, studio):
    """A client on ``studio``'s session origin holding ``session``'s state (as one browser's would, were both
    origins one)."""
    other = SessionClient(session.platform, studio)
    other.http.cookies.set("studios-state", session.http.cookies["studios-state"])
    return other


def test_session_content_is_served_only_on_its_origin_and_platform_pages_never_there(echo, workspace):
    platform, studio, _ = echo
    member = make_member(workspace, Role.CONNECT)
    browser = Browser(platform, member)
    session = browser.session(studio)
    # The old path on the platform's origin is gone.
    assert browser.http.get(f"/studios/{studio.pk}/connect/lab").status_code == 404
    # On the session origin, the platform's own paths are the session's: its login page and admin are not there.
    for path in ("/accounts/login/", "/admin/auth/user/", f"/studios/{studio.pk}/", "/static/studios/studios.js"):
        answer = session.http.get(path)
        assert answer.status_code == 200 and answer.json()["path"] == path
    # Without the session origin's own cookie, nothing: the platform's login cookie is no use there.
    stranger = SessionClient(platform, studio)
    stranger.http.cookies.set("sessionid", platform.session_cookie(member))
    answer = stranger.http.get("/admin/")
    assert answer.status_code == 302
    assert answer.headers["location"].startswith(
        f"{platform.url}/studios/{studio.pk}/ticket/?next=%2Fadmin%2F&browser="
    )


def test_the_session_proxy_serves_session_origins_only_and_the_platform_its_own_hosts_only(echo, workspace):
    """Each port refuses the other's hosts, and any host that is neither."""
    platform, studio, _ = echo
    cookie = make_session_cookie(studio, make_member(workspace, Role.CONNECT))
    headers = {"Cookie": f"studios-session={cookie}"}
    neither = (
        "evil.example",
        f"s{studio.pk}.localhost.evil.example",
        f"x{studio.pk}.localhost",
        f"s{studio.pk}x.localhost",
        f"s0{studio.pk}.localhost",
        f"a.s{studio.pk}.localhost",
    )
    refusals = [(platform.session_port, host) for host in (*neither, "localhost", f"127.0.0.1:{platform.port}")]
    refusals += [(platform.port, host) for host in (*neither, platform.session_host(studio))]
    for port, host in refusals:
        answer = httpx.get(f"http://127.0.0.1:{port}/lab", headers={"Host": host, **headers})
        assert answer.status_code == 400, (port, host)
        with pytest.raises((websockets.InvalidStatus, websockets.InvalidHandshake)):
            connect(
                f"ws://{host}/api/kernels/k/channels",
                address=("127.0.0.1", port),
                additional_headers=headers,
                origin=f"http://{host}",
            )
    answer = httpx.get(platform.session_url + "/lab", headers={"Host": platform.session_host(studio), **headers})
    assert answer.status_code == 200 and answer.json()["path"] == "/lab"
    assert httpx.get(platform.url + "/accounts/login/").status_code == 200


def test_a_ticket_is_good_once(echo, workspace):
    platform, studio, _ = echo
    browser = Browser(platform, make_member(workspace, Role.CONNECT))
    first = SessionClient(platform, studio)
    location = ticket_of(browser, first, "/lab?reset")
    replay = same_browser(first, studio)
    answer = redeem(first, location)
    assert answer.status_code == 302 and answer.headers["location"] == "/lab?reset"
    assert first.http.get("/api/status").status_code == 200
    answer = redeem(replay, location)
    assert answer.status_code == 403 and "has been used" in answer.text
    assert "set-cookie" not in answer.headers
    assert replay.http.get("/api/status").status_code == 302


def test_an_expired_ticket_is_refused(echo, workspace, monkeypatch):
    platform, studio, _ = echo
    browser = Browser(platform, make_member(workspace, Role.CONNECT))
    # Its record is older than a minute.
    session = SessionClient(platform, studio)
    location = ticket_of(browser, session)
    SessionAccess.objects.update(issued=SessionAccess.objects.get().issued - timedelta(seconds=61))
    assert redeem(session, location).status_code == 403
    # Its signature is older than allowed.
    location = ticket_of(browser, session)
    monkeypatch.setattr(origins, "TICKET_SECONDS", -1)
    assert redeem(session, location).status_code == 403


def test_a_ticket_link_made_in_one_browser_signs_no_other_browser_in(echo, workspace):
    """Login CSRF: mallory, a member, has the platform make her a ticket link and sends it to victor. Opened in his
    browser it would sign him in to her access, so that what he then does in the session (and types into it) is
    done as her, where she can see it. Refused, whether his browser has been on the session origin or not."""
    platform, studio, _ = echo
    mallory = SessionClient(platform, studio)
    location = ticket_of(Browser(platform, make_member(workspace, Role.CONNECT, username="mallory")), mallory, "/lab")
    never_there = SessionClient(platform, studio)
    answer = redeem(never_there, location)
    assert answer.status_code == 403 and "another browser" in answer.text
    assert "set-cookie" not in answer.headers
    been_there = SessionClient(platform, studio)
    been_there.ticket_page()
    answer = redeem(been_there, location)
    assert answer.status_code == 403 and not any(name.endswith("studios-session") for name in been_there.http.cookies)
    # Victor signs in as himself; the link works in mallory's own browser only.
    victor = Browser(platform, make_member(workspace, Role.CONNECT, username="victor")).session(studio)
    assert victor.http.get("/api/status").json()["headers"]["x-studios-user"] == "victor"
    assert redeem(mallory, location).status_code == 302
    assert mallory.http.get("/api/status").json()["headers"]["x-studios-user"] == "mallory"


def test_a_ticket_page_not_sent_by_the_session_origin_goes_there_first(echo, workspace):
    platform, studio, _ = echo
    browser = Browser(platform, make_member(workspace, Role.CONNECT))
    answer = browser.http.get(f"/studios/{studio.pk}/ticket/", params={"next": "/lab"})
    assert answer.status_code == 302 and answer.headers["location"] == platform.session_origin(studio) + "/lab"


def test_a_ticket_for_another_studio_or_tampered_with_is_refused(echo, workspace):
    platform, first, second = echo
    browser = Browser(platform, make_member(workspace, Role.CONNECT))
    at_first = SessionClient(platform, first)
    location = ticket_of(browser, at_first)
    # At the other studio's origin.
    assert redeem(same_browser(at_first, second), location).status_code == 403
    # Its origin rewritten: the signature no longer holds.
    ticket = parse_qs(urlsplit(location).query)["ticket"][0]
    claims = signing.loads(ticket, salt=origins.TICKET_SALT)
    forged = signing.dumps({**claims, "origin": platform.session_origin(second)}, salt="another salt")
    answer = same_browser(at_first, second).http.get(origins.TICKET_PATH, params={"ticket": forged})
    assert answer.status_code == 403
    # The untouched ticket still works where it was meant to: refusals did not spend it.
    assert redeem(at_first, location).status_code == 302


def test_a_ticket_or_cookie_of_another_member_gives_only_that_members_access(echo, workspace):
    """An access names its member: carried to another studio, or once that member's role is gone, it is nothing."""
    platform, first, second = echo
    carol = make_member(workspace, Role.CONNECT, username="carol")
    session = Browser(platform, carol).session(first)
    assert session.http.get("/api/status").json()["headers"]["x-studios-user"] == "carol"
    # carol's cookie for the first studio, sent to the second's origin.
    elsewhere = SessionClient(platform, second)
    elsewhere.http.cookies.set("studios-session", session.http.cookies["studios-session"])
    assert elsewhere.http.get("/api/status").status_code == 302
    # A ticket granted to carol, redeemed once she is no longer a member.
    late = SessionClient(platform, first)
    location = ticket_of(Browser(platform, carol), late)
    carol.memberships.all().delete()
    assert redeem(late, location).status_code == 302
    assert late.http.get("/api/status").status_code == 302
    assert session.http.get("/api/status").status_code == 302
    assert session.http.post("/api/contents").status_code == 404


def test_a_forged_cookie_is_refused(echo, workspace):
    platform, studio, _ = echo
    member = make_member(workspace, Role.CONNECT)
    Browser(platform, member).session(studio)
    key = SessionAccess.objects.get().key
    for value in (
        "anything",
        key,  # unsigned
        signing.dumps(key, salt="another salt"),
        signing.dumps(key, salt=origins.COOKIE_SALT, key="another secret"),
        origins.cookie_value("a-key-never-granted"),
    ):
        forged = SessionClient(platform, studio)
        forged.http.cookies.set("studios-session", value)
        assert forged.http.get("/api/status").status_code == 302, value
        assert forged.http.put("/api/contents/x").status_code == 401, value


def test_the_session_cookie_is_host_only_httponly_samesite_and_secure_over_tls(echo, workspace, settings):
    platform, studio, _ = echo
    browser = Browser(platform, make_member(workspace, Role.CONNECT))
    session = SessionClient(platform, studio)
    cookie = redeem(session, ticket_of(browser, session)).headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert cookie.startswith("studios-session=")
    assert attributes == {"path", "httponly", "samesite", "max-age"} and "SameSite=Lax" in cookie
    # Behind a TLS proxy (uvicorn believes X-Forwarded-Proto from the loopback address).
    settings.STUDIOS_PUBLIC_URL = platform.url.replace("http:", "https:")
    session = SessionClient(platform, studio)
    session.http.headers["X-Forwarded-Proto"] = "https"
    location = ticket_of(browser, session)
    assert location.startswith(f"https://{platform.session_host(studio)}/")
    # (httpx keeps a Secure cookie from a plain-HTTP connection, and sends it back only by hand.)
    state = f"__Host-studios-state={session.http.cookies['__Host-studios-state']}"
    cookie = redeem(session, location, headers={"Cookie": state}).headers["set-cookie"]
    assert cookie.startswith("__Host-studios-session=") and "; Secure" in cookie and "Domain" not in cookie
    # A plain-HTTP request to the origin named in an https ticket is another origin.
    plain = SessionClient(platform, studio)
    assert redeem(plain, ticket_of(browser, plain)).status_code == 403


def test_a_page_of_another_origin_cannot_use_a_members_access(echo, workspace):
    """A sibling session's page (same-site under a shared session domain) or the platform's: its requests other
    than navigations, and its WebSockets, are refused."""
    platform, studio, other = echo
    session = Browser(platform, make_member(workspace, Role.CONNECT)).session(studio)
    elsewhere = platform.session_origin(other)
    from_sibling = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Origin": elsewhere}
    assert session.http.get("/api/contents", headers=from_sibling).status_code == 403
    assert session.http.post("/api/kernels", headers={"Origin": elsewhere}).status_code == 403
    assert session.http.post("/api/kernels", headers={"Origin": "null"}).status_code == 403
    navigation = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert session.http.get("/lab", headers=navigation).status_code == 200
    assert session.http.post("/api/kernels", headers={"Origin": session.origin}).status_code == 200
    for origin in (elsewhere, platform.url, None):
        with pytest.raises(websockets.InvalidStatus) as refused:
            connect(
                f"ws://{session.host}/api/kernels/k/channels",
                address=("127.0.0.1", platform.session_port),
                additional_headers={"Cookie": session.cookie_header()},
                origin=origin,
            )
        assert refused.value.response.status_code == 403


@pytest.fixture
def echo_sockets(live_platform, workspace):
    """A running studio whose session echoes WebSocket messages."""
    server = serve(lambda websocket: [websocket.send(message) for message in websocket], "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    studio = make_running(make_studio(workspace), f"http://127.0.0.1:{server.socket.getsockname()[1]}")
    yield live_platform, studio
    server.shutdown()


def test_a_websocket_opens_only_with_the_origins_cookie_and_from_its_own_pages(echo_sockets, workspace):
    platform, studio = echo_sockets
    member = make_member(workspace, Role.CONNECT)
    session = Browser(platform, member).session(studio)
    with connect(
        f"ws://{session.host}/api/kernels/k/channels",
        address=("127.0.0.1", platform.session_port),
        additional_headers={"Cookie": session.cookie_header()},
        origin=session.origin,
    ) as socket:
        socket.send("ping")
        assert socket.recv(timeout=5) == "ping"
    with pytest.raises(websockets.InvalidStatus) as refused:
        connect(
            f"ws://{session.host}/api/kernels/k/channels",
            address=("127.0.0.1", platform.session_port),
            additional_headers={"Cookie": f"sessionid={platform.session_cookie(member)}"},
            origin=session.origin,
        )
    assert refused.value.response.status_code == 403


def test_over_tls_a_session_origin_asked_over_plain_http_redirects_to_https(echo, settings):
    platform, studio, _ = echo
    settings.STUDIOS_HTTPS = True
    session = SessionClient(platform, studio)
    answer = session.http.get("/lab?reset")
    assert answer.status_code == 301 and answer.headers["location"] == f"https://{session.host}/lab?reset"
    session.http.headers["X-Forwarded-Proto"] = "https"  # as the TLS proxy says
    answer = session.http.get("/lab")
    assert answer.status_code == 302 and "/ticket/" in answer.headers["location"]
