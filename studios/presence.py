"""Presence: which members are connected to which studio, derived from the proxy's open WebSockets.

The proxy records each WebSocket it relays when it opens and forgets it when it closes, never per HTTP
request (the proxy is a hot path). Whenever the set of members connected to a studio changes, the studio's
avatar fragment is pushed to every page of its workspace that listens (``consumers.PresenceConsumer``).

A web process that dies cannot close its connections. So each web process keeps a heartbeat while it serves
WebSockets, and the connections of a process whose heartbeat is stale are forgotten: by the heartbeat loop
of every live web process, so that pages hear of it even on the in-memory channel layer (which does not reach
the Celery worker), and by the reconcile task, so that the database is right when no web process runs.
"""

import asyncio
import logging
import os
import secrets
import socket
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from .models import SessionConnection, Studio, WebProcess

log = logging.getLogger(__name__)

# This web process, as its connections and heartbeat name it; unique across restarts.
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def workspace_group(workspace_id):
    """The channel-layer group of the pages showing a workspace's studios."""
    return f"presence.workspace.{workspace_id}"


def _lock_studio(studio_id):
    """Serialise the presence changes of one studio, so that two closing tabs cannot both miss the last one."""
    return Studio.objects.select_for_update().filter(pk=studio_id).values_list("pk", flat=True).first()


def _record_open(user, studio_id):
    """The new connection's id, and whether it is the member's first connection to the studio."""
    with transaction.atomic():
        if _lock_studio(studio_id) is None:
            return None, False  # deleted since the proxy let the socket through
        first = not SessionConnection.objects.filter(studio_id=studio_id, user=user).exists()
        connection = SessionConnection.objects.create(studio_id=studio_id, user=user, web_process=PROCESS_ID)
    return connection.pk, first


def _record_close(connection_id, studio_id, user):
    """Whether the closed connection was the member's last one to the studio."""
    with transaction.atomic():
        if _lock_studio(studio_id) is None:
            return False  # the studio was deleted, and its connections with it
        deleted, _ = SessionConnection.objects.filter(pk=connection_id).delete()
        return bool(deleted) and not SessionConnection.objects.filter(studio_id=studio_id, user=user).exists()


async def connection_opened(user, studio_id):
    """Record a proxied WebSocket that just opened; its connection id, for ``connection_closed``."""
    keep_heartbeat()
    connection_id, first = await database_sync_to_async(_record_open)(user, studio_id)
    if first:
        await announce([studio_id])
    return connection_id


async def connection_closed(connection_id, studio_id, user):
    if await database_sync_to_async(_record_close)(connection_id, studio_id, user):
        await announce([studio_id])


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
    layer = get_channel_layer()
    for group, message in announcements:
        await layer.group_send(group, message)


async def announce(studio_ids):
    """Push each studio's avatar fragment to the pages of its workspace."""
    if studio_ids:
        await _send(await database_sync_to_async(_announcements)(studio_ids))


def forget_dead_processes():
    """Delete the connections of web processes whose heartbeat is stale; the ids of the studios they were on."""
    limit = timezone.now() - timedelta(seconds=3 * settings.STUDIOS_HEARTBEAT_SECONDS)
    alive = WebProcess.objects.filter(heartbeat__gte=limit).values("id")
    # A connection younger than the limit may come from a process whose first heartbeat is not written yet.
    ghosts = SessionConnection.objects.filter(opened__lt=limit).exclude(web_process__in=alive)
    studio_ids = set(ghosts.values_list("studio_id", flat=True))
    if studio_ids:
        log.info("forgetting %d connections of dead web processes", ghosts.delete()[0])
    WebProcess.objects.filter(heartbeat__lt=limit).delete()
    return studio_ids


def forget_dead_processes_and_announce():
    """For synchronous callers (the reconcile task)."""
    async_to_sync(_send)(_announcements(forget_dead_processes()))


def _beat():
    WebProcess.objects.update_or_create(id=PROCESS_ID, defaults={"heartbeat": timezone.now()})


async def _beat_forever():
    # Not thread-sensitive: a slow page holding Django's one sync thread must not make this process look dead.
    beat = database_sync_to_async(_beat, thread_sensitive=False)
    forget = database_sync_to_async(forget_dead_processes, thread_sensitive=False)
    while True:
        try:
            await beat()
            await announce(await forget())
        except Exception:  # a database restart must not stop the heartbeat for good
            log.exception("presence heartbeat failed; retrying")
        await asyncio.sleep(settings.STUDIOS_HEARTBEAT_SECONDS)


_heartbeat = None


def keep_heartbeat():
    """Start this process's heartbeat in the running event loop, unless it runs there already."""
    global _heartbeat
    loop = asyncio.get_running_loop()
    if _heartbeat is None or _heartbeat.done() or _heartbeat.get_loop() is not loop:
        _heartbeat = loop.create_task(_beat_forever())
