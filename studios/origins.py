"""Each studio's session on an origin of its own: ``<prefix><studio id>.<session domain>``, e.g. ``s12.localhost``.

A session's pages are hostile (code in the session writes them), so they never share an origin with the platform
or with another session: the browser's same-origin policy then keeps them from reading the platform, and the
platform's login cookie (host-only) never reaches them. The session origin has a login of its own, granted by the
platform:

1. a request to a session origin without a valid session cookie is sent to the platform's ticket page
   (``views.studio_ticket``) with the hash of a random state the origin keeps in a cookie of its own in that
   browser; the platform checks the login and the role, records a ``SessionAccess`` and sends the browser back
   with a ticket: signed, naming that access, the session origin and the state's hash, good for
   ``TICKET_SECONDS``;
2. the session origin redeems the ticket once (``redeem``), in the browser whose state it names only, for its own
   cookie: signed, host-only, HttpOnly, SameSite=Lax, Secure (and ``__Host-`` named) over TLS, naming the access.
   (A ticket link someone else's browser was granted is refused: nobody can sign a victim's browser in to their
   own access, to read what the victim then does in the session;)
3. every request and WebSocket is checked again against the access, the member's role and the studio's status in
   one query (``check_access``), so that a revocation takes effect at the next request; open WebSockets are closed
   by ``revocation``.
"""

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.core import signing
from django.db.models import OuterRef, Q, Subquery
from django.http.request import split_domain_port
from django.urls import reverse
from django.utils import timezone

from . import permissions
from .models import Membership, SessionAccess

# How long a ticket may take from the platform to the session origin.
TICKET_SECONDS = 60
# The session origin's own path that redeems tickets; everything else goes to the session.
TICKET_PATH = "/_studios/ticket"
TICKET_SALT = "studios.origins.ticket"
COOKIE_SALT = "studios.origins.cookie"


@functools.lru_cache(maxsize=8)
def _session_host_pattern(prefix, session_domain):
    return re.compile(rf"{re.escape(prefix)}([1-9][0-9]{{0,17}})\.{re.escape(session_domain)}")


def studio_for_host(host):
    """The studio id a ``Host`` header names as its session origin; None for any other host."""
    domain, _port = split_domain_port(host)
    pattern = _session_host_pattern(settings.STUDIOS_SESSION_PREFIX, settings.STUDIOS_SESSION_DOMAIN.lower().strip("."))
    match = pattern.fullmatch(domain)
    return int(match.group(1)) if match else None


def _scheme_and_port(url):
    parts = urlsplit(url)
    return parts.scheme, f":{parts.port}" if parts.port else ""


def session_origin(studio_id, platform_url):
    """The origin of a studio's session: with the scheme of the platform at ``platform_url`` (its public address, or
    the address of the request that asks), and ``STUDIOS_SESSION_PORT``, else the platform's port (one reverse proxy
    in front of both)."""
    scheme, port = _scheme_and_port(settings.STUDIOS_PUBLIC_URL or platform_url)
    if settings.STUDIOS_SESSION_PORT:
        port = f":{settings.STUDIOS_SESSION_PORT}"
    return f"{scheme}://{settings.STUDIOS_SESSION_PREFIX}{studio_id}.{settings.STUDIOS_SESSION_DOMAIN}{port}"


def session_url(request, studio):
    """The address members open and share: the studio's session origin."""
    return session_origin(studio.pk, request.build_absolute_uri("/")) + "/"


def platform_url(session_origin_url):
    """The platform's address as browsers reach it, seen from a session origin: ``STUDIOS_PUBLIC_URL``, else the
    session domain itself with the session origin's scheme and port (session origins without a port of their own:
    ``runstudios`` sets both)."""
    if settings.STUDIOS_PUBLIC_URL:
        return settings.STUDIOS_PUBLIC_URL.rstrip("/")
    scheme, port = _scheme_and_port(session_origin_url)
    return f"{scheme}://{settings.STUDIOS_SESSION_DOMAIN}{port}"


def ticket_page(session_origin_url, studio_id, next_path, state):
    """Where a session origin sends a browser that has no valid cookie; ``state`` is the origin's state cookie in
    that browser."""
    query = urlencode({"next": next_path, "browser": browser_of(state)})
    return f"{platform_url(session_origin_url)}{reverse('studio_ticket', args=[studio_id])}?{query}"


def safe_next(path):
    """A path on the session origin to go on to; anything else (another host, a scheme) becomes ``/``."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\")) or any(c in path for c in "\r\n\t"):
        return "/"
    return path


def browser_of(state):
    """What a ticket names its browser by: a hash of the session origin's state cookie there (never the state,
    which would let whoever sees the ticket link plant it)."""
    return hashlib.sha256(state.encode()).hexdigest()


def is_browser(value):
    return re.fullmatch(r"[0-9a-f]{64}", value) is not None


def state_cookie_name(secure):
    return "__Host-studios-state" if secure else "studios-state"


def login_of(request):
    """What names the browser's platform login in its accesses: a hash of the session key (never the key)."""
    return hashlib.sha256(request.session.session_key.encode()).hexdigest()


def grant(request, studio, next_path, browser):
    """Record an access for the member and this browser's login; the session origin's address that redeems it in
    ``browser`` (``browser_of`` its state) only.

    The caller has checked the login and the role."""
    if request.session.session_key is None:
        request.session.save()
    now = timezone.now()
    SessionAccess.objects.filter(
        Q(redeemed=None, issued__lt=now - timedelta(seconds=TICKET_SECONDS))
        | Q(redeemed__lt=now - timedelta(seconds=settings.SESSION_COOKIE_AGE))
    ).delete()  # tickets never redeemed, and cookies expired
    access = SessionAccess.objects.create(
        key=secrets.token_urlsafe(32), studio=studio, user=request.user, login=login_of(request), issued=now
    )
    origin = session_origin(studio.pk, request.build_absolute_uri("/"))
    ticket = signing.dumps(
        {"access": access.key, "origin": origin, "browser": browser}, salt=TICKET_SALT, compress=False
    )
    return f"{origin}{TICKET_PATH}?{urlencode({'ticket': ticket, 'next': safe_next(next_path)})}"


def redeem(ticket, origin, studio_id, state):
    """The access a ticket grants on the session origin ``origin`` of studio ``studio_id``, in the browser whose
    state cookie is ``state``, once; None for a ticket that is forged, expired, redeemed already, or meant for
    another origin or another browser."""
    try:
        claims = signing.loads(ticket, salt=TICKET_SALT, max_age=TICKET_SECONDS)
    except signing.BadSignature:
        return None
    if not isinstance(claims, dict) or claims.get("origin") != origin or not state:
        return None
    if not secrets.compare_digest(str(claims.get("browser")), browser_of(state)):
        return None
    now = timezone.now()
    redeemed = SessionAccess.objects.filter(
        key=str(claims.get("access")),
        studio_id=studio_id,
        redeemed=None,
        issued__gte=now - timedelta(seconds=TICKET_SECONDS),
    ).update(redeemed=now)
    return str(claims["access"]) if redeemed == 1 else None


def cookie_name(secure):
    """Over TLS the ``__Host-`` prefix: browsers then refuse the cookie from any other host (a session cannot
    plant one for a sibling from a shared parent domain)."""
    return "__Host-studios-session" if secure else "studios-session"


def cookie_value(access_key):
    return signing.dumps(access_key, salt=COOKIE_SALT, compress=False)


def access_key_from_cookie(value):
    try:
        key = signing.loads(value, salt=COOKIE_SALT, max_age=settings.SESSION_COOKIE_AGE)
    except signing.BadSignature:
        return None
    return key if isinstance(key, str) else None


@dataclass(frozen=True)
class Access:
    """What the proxy may do for a browser on a studio's session origin: ``status`` 200, or why not."""

    status: int
    message: str = ""
    user: object = None
    studio: object = None
    endpoint: str = ""
    token: str = ""


def check_access(access_key, studio_id):
    """The access, the member's role and the studio's status, in one query; this runs for every proxied request
    and whenever an open WebSocket hears of a change (``revocation``)."""
    if not access_key:
        return Access(401)
    oldest = timezone.now() - timedelta(seconds=settings.SESSION_COOKIE_AGE)
    role = Membership.objects.filter(workspace=OuterRef("studio__workspace"), user=OuterRef("user")).values("role")
    access = (
        SessionAccess.objects.select_related("user", "studio__session")
        .annotate(role=Subquery(role[:1]))
        .filter(key=access_key, studio_id=studio_id, redeemed__gte=oldest, user__is_active=True)
        .first()
    )
    if access is None:
        return Access(401)
    studio = access.studio
    if access.role is None:
        return Access(404, "No such studio.")
    if not permissions.has_role(access.role, permissions.CONNECT):
        return Access(403, f"You need the connect role or higher to open this session; your role is {access.role}.")
    session = studio.session
    if not studio.session_open or session is None or not session.token:
        return Access(409, f"{studio.name} is {studio.status}, not running.")
    return Access(200, user=access.user, studio=studio, endpoint=session.endpoint, token=session.token)
