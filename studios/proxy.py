"""The connect proxy: ASGI, in processes of its own (``studios_project.session_asgi``), serving each studio's session
origin (``origins``).

A session origin serves the session and nothing of the platform: the redirect to the platform's ticket page, the
ticket's redemption for the origin's own cookie, and then every request and WebSocket checked against the access,
the role table and the studio's status (``origins.check_access``) and streamed to the session's endpoint with the
session's token added on the way. The token never reaches the browser, and no login cookie reaches the session.
"""

import asyncio
import functools
import logging
import secrets
from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from django.http.cookie import parse_cookie
from django.utils import timezone

from . import activity, forwarding, origins, presence, revocation, upstream
from .exceptions import DATABASE_OUTAGES, outage_page

log = logging.getLogger(__name__)

# Request headers the proxy sets itself: a browser cannot send its own.
REPLACED_HEADERS = {
    name.encode() for name in forwarding.HOP_HEADERS | {"cookie", "x-studios-session-token", "x-studios-user"}
}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# How long a browser keeps its state on a session origin: long enough to log in at the platform on the way.
STATE_SECONDS = 24 * 3600
# Added to every response of a session: its pages may be framed by its own origin only (JupyterLab frames its own
# documents), never by another site's page that would dress them up to take a member's clicks. A policy of its own
# next to the session's: browsers enforce each, so the session cannot loosen it.
FRAMING = (b"content-security-policy", b"frame-ancestors 'self'")

pool = upstream.Pool()  # this process's kept-alive connections to sessions


def header(scope, name):
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def is_secure(scope):
    return scope.get("scheme") in ("https", "wss")


def own_origin(scope):
    """This session origin, as browsers name it in ``Origin`` headers and tickets."""
    return f"{'https' if is_secure(scope) else 'http'}://{header(scope, b'host').lower()}"


@functools.cache
def login_cookies():
    """The names of the cookies of the platform and of session origins: a session never sees nor sets them."""
    return frozenset(
        {
            origins.cookie_name(True),
            origins.cookie_name(False),
            origins.state_cookie_name(True),
            origins.state_cookie_name(False),
            settings.SESSION_COOKIE_NAME,
            settings.CSRF_COOKIE_NAME,
        }
    )


@functools.cache
def own_cookie_prefixes():
    return tuple(f"{name}=".encode("latin-1") for name in login_cookies())


def answer_headers(headers):
    """The session's answer headers as the browser gets them: without hop-by-hop headers, without cookies of the
    proxy's own (one naming another member's access, or a state the session knows, would have the browser act as
    someone else), and with ``FRAMING``."""
    own = own_cookie_prefixes()
    kept = [
        (name, value)
        for name, value in headers
        if (lowered := name.lower()) not in forwarding.HOP_HEADER_BYTES
        and (lowered != b"set-cookie" or not value.lstrip().startswith(own))
    ]
    kept.append(FRAMING)
    return kept


@functools.lru_cache(maxsize=4096)
def access_key_of(cookie):
    """The access a session origin's cookie names (its signature checked once per process and cookie: the
    access's own expiry is checked with the role, ``origins.check_access``)."""
    return origins.access_key_from_cookie(cookie)


def access_key(scope):
    value = parse_cookie(header(scope, b"cookie")).get(origins.cookie_name(is_secure(scope)), "")
    return access_key_of(value) if value else None


def state(scope):
    """This browser's state on the session origin (``origins``): its cookie's, else a new one to set."""
    return parse_cookie(header(scope, b"cookie")).get(origins.state_cookie_name(is_secure(scope)), "")


def set_cookie(scope, name, value, max_age):
    """A host-only, HttpOnly, SameSite=Lax cookie of this origin (and Secure over TLS)."""
    cookie = f"{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}" + (
        "; Secure" if is_secure(scope) else ""
    )
    return (b"set-cookie", cookie.encode("latin-1"))


def upstream_headers(scope, token, username):
    """The request's headers as the session gets them: its own cookies only, and who asks with the session's
    token."""
    headers = []
    for name, value in scope["headers"]:
        name = name.lower()
        if name == b"cookie":
            hidden = login_cookies()
            kept = [c for c in value.decode("latin-1").split(";") if c.strip().split("=")[0] not in hidden]
            if kept:
                headers.append((b"cookie", ";".join(kept).strip().encode("latin-1")))
        elif name not in REPLACED_HEADERS:
            headers.append((name, value))
    headers.append((b"x-studios-session-token", token.encode("latin-1")))
    headers.append((b"x-studios-user", username.encode("latin-1")))
    return headers


def target(scope):
    """The request's path and query, as the browser sent them."""
    raw_path = scope.get("raw_path")
    if raw_path is None:  # an ASGI server may leave it out
        return forwarding.target(scope).encode("latin-1")
    query = scope["query_string"]
    return raw_path + b"?" + query if query else raw_path


def foreign(scope):
    """Why a request comes from another site's page, which may not use the member's access here (a sibling
    session's page is same-site under a shared session domain); "" for a request this origin's pages or a
    navigation made. Browsers say so in ``Sec-Fetch-Site`` and ``Origin``."""
    site, mode = header(scope, b"sec-fetch-site"), header(scope, b"sec-fetch-mode")
    if site in ("cross-site", "same-site") and mode not in ("navigate", "websocket"):
        return "A request from another site's page may not use your access to this session."
    origin = header(scope, b"origin")
    unsafe = scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS
    if unsafe and origin and origin != own_origin(scope):
        return "A page of another origin may not use your access to this session."
    return ""


async def answer(send, status, text="", headers=()):
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store"), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


async def redirect(send, location, headers=()):
    await answer(send, 302, headers=[(b"location", location.encode("latin-1")), *headers])


class SessionHTTPProxy:
    """A raw ASGI application: request and response bodies stream through without buffering."""

    async def __call__(self, scope, receive, send):
        studio_id = scope["studio_id"]
        if settings.STUDIOS_HTTPS and not is_secure(scope):
            await answer(
                send,
                301,
                headers=[
                    (b"location", f"https://{header(scope, b'host')}{forwarding.target(scope)}".encode("latin-1"))
                ],
            )
            return
        if scope["path"] == origins.TICKET_PATH:
            await self.redeem(scope, send, studio_id)
            return
        refusal = foreign(scope)
        if refusal:
            await answer(send, 403, refusal)
            return
        access = await revocation.decisions.check(access_key(scope), studio_id)
        if access.status != 200:
            await self.refuse(scope, send, access, studio_id)
            return
        log.debug("proxy http user=%s studio=%s %s %s", access.user, studio_id, scope["method"], scope["path"])
        await activity.touch(studio_id, access.user)
        headers = upstream_headers(scope, access.token, access.user.get_username())
        if not await upstream.forward(
            pool, access.endpoint, scope, target(scope), headers, receive, send, answer_headers
        ):
            log.warning("proxy: session of studio %s unreachable", studio_id)
            await answer(send, 502, "The session did not answer. It may be stopping or restarting; try again.")

    async def redeem(self, scope, send, studio_id):
        """Exchange a ticket for this origin's cookie, and go on to the page the browser asked for."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ticket, next_path = query.get("ticket", [""])[0], origins.safe_next(query.get("next", ["/"])[0])
        key = await database_sync_to_async(origins.redeem)(ticket, own_origin(scope), studio_id, state(scope))
        if key is None:
            log.info("proxy: ticket for studio %s refused", studio_id)
            await answer(
                send,
                403,
                "This link to the session has been used, has expired or was opened in another browser than the one "
                "it was made for. Open the session again.",
            )
            return
        cookie = set_cookie(
            scope, origins.cookie_name(is_secure(scope)), origins.cookie_value(key), settings.SESSION_COOKIE_AGE
        )
        await redirect(send, next_path, headers=[cookie])

    async def refuse(self, scope, send, access, studio_id):
        """A page asked for is sent to the platform, which logs in, grants a ticket, or says why not (a studio that
        is not running offers Start to maintainers there); anything else gets the status and a sentence."""
        if scope["method"] in ("GET", "HEAD"):
            # One state per browser, kept across its tickets: tabs opening at once must not void each other's.
            browser_state = state(scope) or secrets.token_urlsafe(32)
            location = origins.ticket_page(own_origin(scope), studio_id, forwarding.target(scope), browser_state)
            cookie = set_cookie(scope, origins.state_cookie_name(is_secure(scope)), browser_state, STATE_SECONDS)
            await redirect(send, location, headers=[cookie])
            return
        await answer(send, access.status, access.message or "Open the session again to sign in.")


class SessionWebSocketProxy:
    """Passes one browser WebSocket's handshake to the session and splices the two connections (``splice``) until
    either side ends or the member's access does (``revocation``).

    While it is open, the member counts as connected to the studio (``presence``), and the frames the member sends
    count as use (``activity``).
    """

    async def __call__(self, scope, receive, send):
        studio_id = scope["studio_id"]
        refusal = foreign(scope) or ("" if header(scope, b"origin") else "A WebSocket must say its origin.")
        if settings.STUDIOS_HTTPS and not is_secure(scope):
            refusal = "Connect over TLS (wss://)."
        key = access_key(scope) if not refusal else None
        access = await revocation.decisions.check(key, studio_id) if key else None
        await receive()  # websocket.connect
        if "websocket.splice" not in scope.get("extensions", {}):
            log.error("proxy: served without its WebSocket protocol; add --ws studios.splice:WebSocketSplice")
            await forwarding.refuse_websocket(scope, send, 500, "The session proxy cannot open WebSockets.")
            return
        if access is None or access.status != 200:
            await forwarding.refuse_websocket(scope, send, 403, refusal or "No access to this session.")
            return
        user = access.user
        watch = RevocationWatch(key, studio_id, user.pk)
        if not await watch.start():
            await forwarding.refuse_websocket(scope, send, 403, "No access to this session.")
            return
        held = None
        try:
            if await self.open(scope, receive, send, access):
                log.debug("proxy websocket open user=%s studio=%s %s", user, studio_id, scope["path"])
                # Recorded beside the splice, not before it: the member's first frames do not wait for the database.
                held = asyncio.create_task(presence.connection_opened(user, studio_id))
                await activity.touch(studio_id, user)
                used = asyncio.create_task(self.used(receive, studio_id, user))
                watch.guard(used)
                await used
            else:
                log.warning("proxy: websocket to studio %s failed", studio_id)
        except asyncio.CancelledError:
            if not watch.revoked:
                raise
            log.info("proxy websocket closed: access of user=%s to studio=%s ended", user, studio_id)
            await send({"type": "websocket.close", "code": 1008})
        finally:
            watch.stop()
            if held is not None:
                connection = await held
                seconds = (timezone.now() - connection.opened).total_seconds()
                log.info(
                    "proxy websocket closed user=%s studio=%s %s, open %.1f s", user, studio_id, scope["path"], seconds
                )
                await presence.connection_closed(connection)

    async def open(self, scope, receive, send, access):
        """Pass the handshake to the session, and its answer back: whether the session accepted the WebSocket.
        The session gets the handshake's own headers (its key, version, protocols and extensions) with the
        proxy's (``upstream_headers``); its Host and Origin are the session's own (the browser's origin was checked
        before)."""
        endpoint = urlsplit(access.endpoint)
        headers = [
            (name, value)
            for name, value in upstream_headers(scope, access.token, access.user.get_username())
            if name not in (b"host", b"origin")
        ]
        headers += [(b"host", endpoint.netloc.encode()), (b"origin", access.endpoint.encode())]
        await send(
            {
                "type": "websocket.splice",
                "host": endpoint.hostname,
                "port": endpoint.port,
                "target": target(scope),
                "headers": headers,
                # The member's use is written at most this often anyway (``activity.touch``).
                "used_every": settings.STUDIOS_ACTIVITY_WRITE_SECONDS,
            }
        )
        answer = await receive()
        if answer["type"] != "websocket.splice.answer":
            return False  # the browser went away
        if answer["status"] != 101:
            await forwarding.refuse_websocket(
                scope, send, 502, "The session did not answer; it may be stopping or restarting."
            )
            return False
        await send({"type": "websocket.accept", "headers": answer_headers(answer["headers"])})
        return True

    async def used(self, receive, studio_id, user):
        """Until the socket ends: the member's frames count as use of the studio."""
        while (await receive())["type"] == "websocket.splice.used":
            await activity.touch(studio_id, user)


class RevocationWatch:
    """Cancels one socket's splice when an announcement in the groups of its member or studio (``revocation``) turns
    out to have ended its access."""

    def __init__(self, key, studio_id, user_id):
        self.key, self.studio_id = key, studio_id
        self.groups = (revocation.user_group(user_id), revocation.studio_group(studio_id))
        self.spliced = None
        self.revoked = False

    async def start(self):
        """Listen, then check the access again (a change between the first check and the listening would be missed
        otherwise); whether it still holds. A channel layer that cannot be reached leaves the socket unwatched
        (logged): its member's next HTTP request is still checked."""
        await revocation.decisions.watch(self.groups, self.changed)
        if revocation.decisions.in_memory:
            revocation.decisions.ask_again(self.key, self.studio_id, self.end)
        return (await revocation.decisions.check(self.key, self.studio_id)).status == 200

    def guard(self, spliced):
        self.spliced = spliced
        if self.revoked:
            spliced.cancel()

    async def changed(self):
        try:
            access = await revocation.check_access(self.key, self.studio_id)
        except DATABASE_OUTAGES:
            log.exception("proxy: cannot check again the access to studio %s's socket", self.studio_id)
            return
        if access.status != 200:
            self.end()

    def end(self):
        if not self.revoked:
            self.revoked = True
            if self.spliced is not None:
                self.spliced.cancel()

    def stop(self):
        revocation.decisions.forget(self.groups, self.changed)
        revocation.decisions.stop_asking(self.key, self.studio_id, self.end)


def outage_answered(application):
    """The proxy reads the database before it answers: when it cannot be reached, answer the 503 page (as Django's
    pages do) instead of a bare 500."""

    async def answered(scope, receive, send):
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

    return answered
