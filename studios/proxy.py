"""The connect proxy: ASGI, inside the web process.

Every request under ``/studios/<id>/connect/`` is authenticated with the Django session,
checked against the role table (connect and above), and streamed to the session's endpoint
with the session's token added on the way. The token never reaches the browser, and the
platform's own cookies never reach the session.
"""

import asyncio
import io
import logging
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import quote

import httpx
import websockets
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest

from . import permissions, presence, views

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection, not the message.
HOP_HEADERS = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade",
}  # fmt: skip
# Request headers the proxy sets itself: a browser cannot send its own.
REPLACED_HEADERS = HOP_HEADERS | {"cookie", "x-studios-session-token", "x-studios-user"}
PLATFORM_COOKIES = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}

_client = None


def client():
    """One pooled HTTP client per web process. It keeps no cookies: they belong to each browser."""
    global _client
    if _client is None:
        _client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, read=None),
            follow_redirects=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=())),
        )
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
    studio = permissions.studio_with_role(user, studio_id)
    if studio is None or studio.role is None:
        return Access(404, "No such studio.")
    if not permissions.has_role(studio.role, permissions.CONNECT):
        message = f"You need the connect role or higher to open this session; your role is {studio.role}."
        return Access(403, message, studio=studio)
    if not studio.can_connect:
        return Access(409, f"{studio.name} is {studio.status}, not running.", studio=studio)
    return Access(200, endpoint=studio.session_endpoint, token=studio.session_token, studio=studio)


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


def upstream_target(scope):
    path = quote(scope["path"], safe="/%:@!$&'()*+,;=-._~")
    query = scope.get("query_string", b"").decode("latin-1")
    return path + (f"?{query}" if query else "")


class SessionHTTPProxy:
    """A raw ASGI application: request and response bodies stream through without buffering."""

    async def __call__(self, scope, receive, send):
        studio_id = scope["url_route"]["kwargs"]["studio_id"]
        access = await check_access(scope["user"], studio_id)
        if access.status != 200:
            await self.refuse(scope, send, access)
            return
        log.info("proxy http user=%s studio=%s %s %s", scope["user"], studio_id, scope["method"], scope["path"])

        async def request_body():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        method = scope["method"]
        request = client().build_request(
            method,
            access.endpoint + upstream_target(scope),
            headers=upstream_headers(scope, access.token),
            content=request_body() if method not in ("GET", "HEAD") else None,
        )
        try:
            response = await client().send(request, stream=True)
        except httpx.HTTPError as error:
            log.warning("proxy: session of studio %s unreachable: %s", studio_id, error)
            message = "The session did not answer. It may be stopping or restarting; try again."
            await self.page(scope, send, 502, message, access.studio)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in response.headers.multi_items()
                        if name.lower() not in HOP_HEADERS
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def refuse(self, scope, send, access):
        if access.status == 401:
            location = f"{settings.LOGIN_URL}?next={quote(upstream_target(scope))}"
            await send({"type": "http.response.start", "status": 302, "headers": [(b"location", location.encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.page(scope, send, access.status, access.message, access.studio)

    async def page(self, scope, send, status, message, studio=None):
        """A platform page instead of the session, from a Django view (which may set the CSRF cookie its form needs)."""
        request = ASGIRequest(scope, io.BytesIO())
        request.user = scope["user"]
        response = await database_sync_to_async(views.session_unavailable)(
            request, status, message, studio, studio.role if studio else None
        )
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
        headers += [(b"set-cookie", cookie.OutputString().encode("latin-1")) for cookie in response.cookies.values()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})


class SessionWebSocketProxy(AsyncWebsocketConsumer):
    """Relays one browser WebSocket to the session, frame by frame, in both directions.

    While it is open, the member counts as connected to the studio (``presence``).
    """

    upstream = None
    relay = None
    connection_id = None

    async def connect(self):
        studio_id = self.scope["url_route"]["kwargs"]["studio_id"]
        access = await check_access(self.scope["user"], studio_id)
        if access.status != 200:
            await self.close()
            return
        url = access.endpoint.replace("http", "ws", 1) + upstream_target(self.scope)
        # The websockets client writes its own handshake headers; the browser's Origin was
        # checked against ALLOWED_HOSTS before this consumer ran, so the session is told it
        # comes from its own address.
        headers = [
            (name, value)
            for name, value in upstream_headers(self.scope, access.token)
            if not name.startswith("sec-websocket") and name not in ("host", "origin")
        ]
        try:
            self.upstream = await websockets.connect(
                url,
                additional_headers=headers,
                subprotocols=self.scope.get("subprotocols") or None,
                max_size=None,
                origin=access.endpoint,
                user_agent_header=None,
            )
        except (OSError, websockets.WebSocketException) as error:
            log.warning("proxy: websocket to studio %s failed: %s", studio_id, error)
            await self.close()
            return
        log.info("proxy websocket open user=%s studio=%s %s", self.scope["user"], studio_id, self.scope["path"])
        await self.accept(subprotocol=self.upstream.subprotocol)
        self.relay = asyncio.create_task(self.relay_from_session())
        self.connection_id = await presence.connection_opened(self.scope["user"], access.studio.pk)

    async def relay_from_session(self):
        """Relay the session's frames; when the session's side ends, however it ends, close the browser's too.

        (A browser socket left open to a dead session would keep its member "connected" for good.)
        """
        try:
            async for message in self.upstream:
                if isinstance(message, str):
                    await self.send(text_data=message)
                else:
                    await self.send(bytes_data=message)
        except websockets.ConnectionClosed:
            pass  # the session went away without a closing handshake
        except OSError:
            return  # the browser went away; disconnect() tidies up
        await self.close()

    async def receive(self, text_data=None, bytes_data=None):
        if self.upstream is not None:
            try:
                await self.upstream.send(text_data if text_data is not None else bytes_data)
            except websockets.ConnectionClosed:
                await self.close()

    async def disconnect(self, code):
        studio_id = self.scope["url_route"]["kwargs"]["studio_id"]
        if self.relay is not None:
            self.relay.cancel()
        if self.upstream is not None:
            await self.upstream.close()
            log.info("proxy websocket closed user=%s studio=%s", self.scope["user"], studio_id)
        if self.connection_id is not None:
            await presence.connection_closed(self.connection_id, studio_id, self.scope["user"])
