"""Presence: which members are connected to which studio, derived from the proxy's open WebSockets.

The proxy tells this module when each WebSocket it relays opens and closes, never per HTTP request (the proxy is
a hot path). Whenever the set of members connected to a studio changes, the studio's avatar fragment is pushed to
every page of its workspace that listens (``consumers.PresenceConsumer``); so is every other change the lifecycle
makes to a studio (``studio_changed``).

Each web process holds the connections it relays in memory (``_held``): that is the truth, and the database rows
(``SessionConnection``, one per member and studio the process holds connections of) are its record. Only a
member's first connection to a studio and their last one's close touch the database: a page holds several
WebSockets (JupyterLab one per kernel, terminal and event stream) and opens and closes them as it goes, and a
reload closes and opens them all; a last close is recorded ``LEAVE_AFTER_SECONDS`` later, unless the member is
back by then. A write can fail (the database is down for a moment), and so can an
announcement (Redis is); neither may break the member's WebSocket. So each web process keeps a heartbeat that
writes the record again from what it holds: rows it holds but could not write are created, rows it no longer
holds but could not delete are deleted. A web process that dies cannot close its connections: the connections of
a process whose heartbeat is stale (and not only because the database was down, see ``forget_dead_processes``)
are forgotten, by the heartbeat of every live web process (so that pages hear of it even on the in-memory channel
layer, which does not reach the Celery worker) and by the reconcile task.
"""

import asyncio
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core import signing
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.template.loader import render_to_string
from django.utils import timezone

from . import activity
from .models import SessionConnection, Studio, WebProcess

log = logging.getLogger(__name__)

# This web process, as its connections and heartbeat name it; unique across restarts.
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, eq=False)
class HeldConnection:
    """A proxied WebSocket this process holds open."""

    studio_id: int
    user_id: int
    opened: datetime


# (studio id, member id) -> the member's connections to the studio. Changed on the event loop, read by the threads
# that write the record.
_held: dict[tuple[int, int], set[HeldConnection]] = {}
_held_lock = threading.Lock()


def _held_members():
    """{(studio id, member id): when the member's first connection to the studio that this process holds opened}"""
    with _held_lock:
        return {member: min(held.opened for held in connections) for member, connections in _held.items()}


def workspace_group(workspace_id):
    """The channel-layer group of the pages showing a workspace's studios."""
    return f"presence.workspace.{workspace_id}"


def _lock_studio(studio_id):
    """Serialise the presence changes of one studio, so that two closing tabs cannot both miss the last one."""
    return Studio.objects.select_for_update().filter(pk=studio_id).values_list("pk", flat=True).first()


def _settle(studio_id):
    """Make this process's rows of one studio match the members it holds connections of (one row each, since
    their first connection's open); whether the studio's connected members changed.

    Callers change ``_held`` first and settle after, and the held connections are read under the studio's lock:
    so the last of two settles racing (an open, a close, the heartbeat) writes the newest truth.
    """
    with transaction.atomic():
        if _lock_studio(studio_id) is None:
            return False  # deleted, and its connections with it
        connections = SessionConnection.objects.filter(studio_id=studio_id)
        rows = list(connections.values_list("pk", "user_id", "web_process"))
        missing = {
            user_id: opened for (held_studio, user_id), opened in _held_members().items() if held_studio == studio_id
        }
        surplus = []
        for pk, user_id, web_process in rows:
            if web_process == PROCESS_ID and missing.pop(user_id, None) is None:
                surplus.append(pk)
        SessionConnection.objects.filter(pk__in=surplus).delete()
        SessionConnection.objects.bulk_create(
            SessionConnection(studio_id=studio_id, user_id=user_id, opened=opened, web_process=PROCESS_ID)
            for user_id, opened in missing.items()
        )
        before = {user_id for _, user_id, _ in rows}
        after = {user_id for pk, user_id, _ in rows if pk not in surplus} | set(missing)
        activity.connections_changed(studio_id, before, after)
    return before != after


# The pause that gathers a studio's changes of connections into one settle: what pages wait at most for more than
# the settle itself.
SETTLE_AFTER_SECONDS = 0.05
_settling: dict[int, asyncio.Task] = {}  # studio id -> the settle to come, which includes the changes made now


async def _settle_and_announce(studio_id):
    """Settle and announce the studio's connections as they are a moment from now (``SETTLE_AFTER_SECONDS``),
    once for every change made until then: a page opens its WebSockets together (JupyterLab several at once), a
    reload closes and opens them again, and each would cost a transaction, a render and an announcement of its
    own, on the proxy's CPU, while the next socket opens."""
    loop = asyncio.get_running_loop()
    settle = _settling.get(studio_id)
    if settle is None or settle.get_loop() is not loop:
        settle = _settling[studio_id] = loop.create_task(_settle_soon(studio_id))
    await asyncio.shield(settle)


async def _settle_soon(studio_id):
    """A failure is logged, never raised: it must not break the member's WebSocket, and the heartbeat repairs
    the record (pages that missed an announcement get the current avatars when they reconnect)."""
    try:
        await asyncio.sleep(SETTLE_AFTER_SECONDS)
    finally:
        if _settling.get(studio_id) is asyncio.current_task():
            del _settling[studio_id]  # a change made from now on waits for a settle of its own
    try:
        if await database_sync_to_async(_settle)(studio_id):
            await announce([studio_id])
    except Exception:
        log.exception("presence of studio %s not recorded or not announced; the heartbeat repairs it", studio_id)


# How long a member whose last connection to a studio closed still counts as connected: a reload, or a page
# closing one socket as it opens the next, is not a leave.
LEAVE_AFTER_SECONDS = 1.0


async def connection_opened(user, studio_id):
    """Hold a proxied WebSocket that just opened; what to pass to ``connection_closed``."""
    keep_heartbeat()
    connection = HeldConnection(studio_id, user.pk, timezone.now())
    with _held_lock:
        connections = _held.setdefault((studio_id, user.pk), set())
        first = not connections
        connections.add(connection)
    if first:
        await _settle_and_announce(studio_id)
    return connection


async def connection_closed(connection):
    """Let go of a connection that ``connection_opened`` returned, ``LEAVE_AFTER_SECONDS`` from now."""
    try:
        await asyncio.sleep(LEAVE_AFTER_SECONDS)
    finally:
        member = (connection.studio_id, connection.user_id)
        with _held_lock:
            connections = _held[member]
            connections.discard(connection)
            last = not connections
            if last:
                del _held[member]
    if last:
        await _settle_and_announce(connection.studio_id)


def avatar_fragments(studios):
    """[(studio, html)]: the avatar fragment of each studio in the queryset, as the pages include it."""
    return [
        (studio, render_to_string("studios/partials/avatars.html", {"studio": studio}))
        for studio in studios.prefetch_related("connections__user")
    ]


def _announcements(studio_ids):
    """[(group, message)] telling each studio's workspace its new avatar fragment."""
    return [
        (workspace_group(studio.workspace_id), {"type": "presence.changed", "studio": studio.pk, "html": html})
        for studio, html in avatar_fragments(Studio.objects.filter(pk__in=studio_ids))
    ]


async def _send(announcements):
    if settings.STUDIOS_PAGES_RELAY:  # the pages listen on another process's in-memory layer (``send_on_commit``)
        for group, message in announcements:
            await asyncio.to_thread(relay, group, message)
        return
    layer = get_channel_layer()
    for group, message in announcements:
        await layer.group_send(group, message)


async def announce(studio_ids):
    """Push each studio's avatar fragment to the pages of its workspace."""
    if studio_ids:
        await _send(await database_sync_to_async(_announcements)(studio_ids))


def _repair_record():
    """Settle every studio whose rows of this process differ from what it holds; the ids of those whose
    connected members changed."""
    held = set(_held_members())
    written = set(SessionConnection.objects.filter(web_process=PROCESS_ID).values_list("studio_id", "user_id"))
    differing = {studio_id for studio_id, _ in held ^ written}
    return {studio_id for studio_id in differing if _settle(studio_id)}


def forget_dead_processes():
    """Delete the connections of web processes whose heartbeat is stale; the ids of the studios they were on.

    While the database is unreachable nobody's heartbeat is written, so every heartbeat goes stale at once: the
    first to look once the database is back would judge live processes dead. So a stale heartbeat is judged only
    once the database has been reachable for the whole threshold, which is when some web process has beaten
    without a break for that long (``WebProcess.beating_since``): by then every live process has beaten too.
    When no web process has, nothing is forgotten; a live one that starts judges after its first threshold.
    """
    limit = timezone.now() - timedelta(seconds=3 * settings.STUDIOS_HEARTBEAT_SECONDS)
    if not WebProcess.objects.filter(heartbeat__gte=limit, beating_since__lte=limit).exists():
        return set()
    alive = WebProcess.objects.filter(heartbeat__gte=limit).values("id")
    # A connection younger than the limit may come from a process whose first heartbeat is not written yet.
    ghosts = SessionConnection.objects.filter(opened__lt=limit).exclude(web_process__in=alive)
    studio_ids = set(ghosts.values_list("studio_id", flat=True))
    if studio_ids:
        log.info("forgetting %d connections of dead web processes", ghosts.delete()[0])
        activity.connections_forgotten(studio_ids)
    WebProcess.objects.filter(heartbeat__lt=limit).delete()
    return studio_ids


def send_on_commit(group, message):
    """After the commit, send ``message`` to the channel-layer ``group``. A channel layer that cannot be reached is
    logged: pages still show the change at their next load (and the socket's listeners at their next change).

    The in-memory channel layer (embedded defaults, no Redis) reaches only its own process: the Celery worker and
    the session proxy ``runstudios`` starts beside the web server are given ``STUDIOS_PAGES_RELAY``, where they
    hand their messages to the web process (``relay``, ``deliver``)."""

    async def send():
        try:
            await get_channel_layer().group_send(group, message)
        except Exception:
            log.exception("could not send %s to %s", message["type"], group)

    def send_now():
        if settings.STUDIOS_PAGES_RELAY:
            relay(group, message)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            async_to_sync(send)()
        else:  # a caller that runs an event loop in its own thread (Playwright's, in the browser tests)
            task = loop.create_task(send())
            _sending.add(task)
            task.add_done_callback(_sending.discard)

    transaction.on_commit(send_now)


_sending: set[asyncio.Task] = set()  # messages scheduled on a caller's event loop, kept until they are sent


RELAY_SALT = "studios.presence.relay"


def relay(group, message):
    """Hand a message for ``group`` to the web process's channel layer, signed with the platform's secret key."""
    signed = signing.dumps({"group": group, "message": message}, salt=RELAY_SALT)
    try:
        httpx.post(settings.STUDIOS_PAGES_RELAY, content=signed, timeout=5).raise_for_status()
    except httpx.HTTPError:
        log.exception("could not relay %s to %s", message["type"], group)


def deliver(signed):
    """Send a message that ``relay`` handed over (and the platform signed within the last minute) to its group;
    whether it was."""
    try:
        relayed = signing.loads(signed, salt=RELAY_SALT, max_age=60)
    except signing.BadSignature:
        return False
    async_to_sync(get_channel_layer().group_send)(relayed["group"], relayed["message"])
    return True


def studio_changed(studio, added=False):
    """Once committed, tell the pages of ``studio``'s workspace that what they show of it changed (its status, its
    start-up steps, its checkpoints), or that it was ``added``: each page's socket renders its own fragment of it
    for its member's role."""
    message = {"type": "studio.changed", "studio": studio.pk, "added": added}
    send_on_commit(workspace_group(studio.workspace_id), message)


def forget_dead_processes_and_announce():
    """For synchronous callers (the reconcile task)."""
    async_to_sync(_send)(_announcements(forget_dead_processes()))


def _beat():
    """Write this process's heartbeat; its unbroken run of beats starts again after a break of two beats (the
    database, or this process, was away)."""
    now = timezone.now()
    broken = now - timedelta(seconds=2 * settings.STUDIOS_HEARTBEAT_SECONDS)
    since = Case(When(heartbeat__lt=broken, then=Value(now)), default=F("beating_since"))
    if not WebProcess.objects.filter(id=PROCESS_ID).update(heartbeat=now, beating_since=since):
        WebProcess.objects.create(id=PROCESS_ID, heartbeat=now, beating_since=now)


async def _beat_forever():
    # Not thread-sensitive: a slow page holding Django's one sync thread must not make this process look dead.
    beat = database_sync_to_async(_beat, thread_sensitive=False)
    repair = database_sync_to_async(_repair_record, thread_sensitive=False)
    forget = database_sync_to_async(forget_dead_processes, thread_sensitive=False)
    while True:
        try:
            await beat()
            await announce(await repair() | await forget())
        except Exception:  # an outage of the database or the broker must not stop the heartbeat for good
            log.exception("presence heartbeat failed; retrying")
        await asyncio.sleep(settings.STUDIOS_HEARTBEAT_SECONDS)


_heartbeat = None


def keep_heartbeat():
    """Start this process's heartbeat in the running event loop, unless it runs there already."""
    global _heartbeat
    loop = asyncio.get_running_loop()
    if _heartbeat is None or _heartbeat.done() or _heartbeat.get_loop() is not loop:
        _heartbeat = loop.create_task(_beat_forever())
