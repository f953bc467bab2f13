"""The connect proxy: ASGI, inside the web process.

Every request under ``/studios/<id>/connect/`` is authenticated with the Django session,
checked against the role table (connect and above), and streamed to the session's endpoint
with the session's token added on the way. The token never reaches the browser, and the
platform's own cookies never reach the session.
"""

import functools
import io
import logging
from urllib.parse import quote

import websockets
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from . import activity, forwarding, permissions, presence
from .exceptions import DATABASE_OUTAGES, outage_page

log = logging.getLogger(__name__)

# Request headers the proxy sets itself: a browser cannot send its own.
REPLACED_HEADERS = forwarding.HOP_HEADERS | {"cookie", "x-studios-session-token", "x-studios-user"}
PLATFORM_COOKIES = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}

_client = None


def client():
    """One pooled HTTP client per web process."""
    global _client
    if _client is None:
        _client = forwarding.new_client()
    return _client


class Access:
    """What the proxy may do for this user and studio."""

    def __init__(self, status, message="", endpoint="", token="", studio=None):
        self.status, self.message, self.endpoint, self.token, self.studio = status, message, endpoint, token, studio


@database_sync_to_async
def check_access(user, studio_id):
    """The role table for one proxied request, in one query (this runs for every request)."""
    if not user.is_authenticated:
        return Access(401)
    studio = permissions.studio_with_role(user, studio_id, ("session",))
    if studio is None or studio.role is None:
        return Access(404, "No such studio.")
    if not permissions.has_role(studio.role, permissions.CONNECT):
        message = f"You need the connect role or higher to open this session; your role is {studio.role}."
        return Access(403, message, studio=studio)
    if not studio.can_connect:
        return Access(409, f"{studio.name} is {studio.status}, not running.", studio=studio)
    return Access(200, endpoint=studio.session.endpoint, token=studio.session.token, studio=studio)


@ensure_csrf_cookie
def session_unavailable(request, status, message, studio=None, role=None):
    """The page the proxy answers instead of the session (a Django view for its CSRF cookie, but not routed).

    A shared link to a studio that is not running tells its status and, to maintainers, offers Start.
    """
    context = {"status": status, "message": message, "studio": studio, "role": role}
    if studio is not None and status != 404:
        context["workspace"] = studio.workspace
        context["actions"] = [action for action in permissions.studio_actions(role, studio) if action == "start"]
    return render(request, "studios/session_unavailable.html", context, status=status)


def upstream_headers(scope, token):
    headers = []
    for name, value in scope["headers"]:
        name = name.decode("latin-1").lower()
        if name == "cookie":
            kept = [c for c in value.decode("latin-1").split(";") if c.strip().split("=")[0] not in PLATFORM_COOKIES]
            if kept:
                headers.append(("cookie", ";".join(kept).strip()))
        elif name not in REPLACED_HEADERS:
            headers.append((name, value.decode("latin-1")))
    headers.append(("x-studios-session-token", token))
    headers.append(("x-studios-user", scope["user"].get_username()))
    return headers


class SessionHTTPProxy:
    """A raw ASGI application: request and response bodies stream through without buffering."""

    async def __call__(self, scope, receive, send):
        studio_id = scope["url_route"]["kwargs"]["studio_id"]
        access = await check_access(scope["user"], studio_id)
        if access.status != 200:
            await self.refuse(scope, send, access)
            return
        log.info("proxy http user=%s studio=%s %s %s", scope["user"], studio_id, scope["method"], scope["path"])
        await activity.touch(access.studio.pk, scope["user"])
        url = access.endpoint + forwarding.target(scope)
        if not await forwarding.forward_http(
            client(), url, upstream_headers(scope, access.token), scope, receive, send
        ):
            log.warning("proxy: session of studio %s unreachable", studio_id)
            message = "The session did not answer. It may be stopping or restarting; try again."
            await self.page(scope, send, 502, message, access.studio)

    async def refuse(self, scope, send, access):
        if access.status == 401:
            location = f"{settings.LOGIN_URL}?next={quote(forwarding.target(scope))}"
            await send({"type": "http.response.start", "status": 302, "headers": [(b"location", location.encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.page(scope, send, access.status, access.message, access.studio)

    async def page(self, scope, send, status, message, studio=None):
        """A platform page instead of the session, from a Django view (which may set the CSRF cookie its form needs)."""
        request = ASGIRequest(scope, io.BytesIO())
        request.user = scope["user"]
        response = await database_sync_to_async(session_unavailable)(
            request, status, message, studio, studio.role if studio else None
        )
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
        headers += [(b"set-cookie", cookie.OutputString().encode("latin-1")) for cookie in response.cookies.values()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})


class SessionWebSocketProxy:
    """Relays one browser WebSocket to the session, frame by frame, in both directions.

    While it is open, the member counts as connected to the studio (``presence``).
    """

    async def __call__(self, scope, receive, send):
        studio_id = scope["url_route"]["kwargs"]["studio_id"]
        user = scope["user"]
        access = await check_access(user, studio_id)
        if access.status != 200:
            await receive()  # websocket.connect
            await send({"type": "websocket.close"})
            return
        url = access.endpoint.replace("http", "ws", 1) + forwarding.target(scope)
        # The browser's Origin was checked against ALLOWED_HOSTS before this application ran.
        headers = upstream_headers(scope, access.token)
        connection = None

        async def opened():
            nonlocal connection
            log.info("proxy websocket open user=%s studio=%s %s", user, studio_id, scope["path"])
            connection = await presence.connection_opened(user, access.studio.pk)
            await activity.touch(access.studio.pk, user)

        try:
            relayed = await forwarding.relay_websocket(
                functools.partial(websockets.connect, url),
                headers,
                access.endpoint,
                scope,
                receive,
                send,
                opened=opened,
                received=functools.partial(activity.touch, access.studio.pk, user),
            )
            if not relayed:
                log.warning("proxy: websocket to studio %s failed", studio_id)
        finally:
            if connection is not None:
                log.info("proxy websocket closed user=%s studio=%s", user, studio_id)
                await presence.connection_closed(connection)


def outage_answered(application):
    """The proxy's HTTP requests go through Channels' session middleware, which reads the database before any
    view runs: when it cannot be reached, answer the 503 page (as Django's pages do) instead of a bare 500."""

    async def answer(scope, receive, send):
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await application(scope, receive, tracked)
        except DATABASE_OUTAGES:
            log.exception("proxy: the database is unreachable")
            if started:
                raise
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": outage_page().encode()})

    return answer
