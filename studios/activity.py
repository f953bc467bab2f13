"""A studio's last activity: when a member last used its session, and who.

The proxy reports every request a browser makes to a session and every WebSocket frame it sends. The proxy
is a hot path, so each web process writes a studio's activity at most once every
STUDIOS_ACTIVITY_WRITE_SECONDS: the time shown is that precise. A write that fails (the database is down for a
moment) is logged and skipped: it must never fail the request or close the member's WebSocket.
"""

import logging
import time

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import Error
from django.utils import timezone

from .models import Studio

log = logging.getLogger(__name__)

_written: dict[int, float] = {}  # studio id -> when this process last wrote its activity (monotonic seconds)


async def touch(studio_id, user):
    now = time.monotonic()
    last = _written.get(studio_id)
    if last is not None and now - last < settings.STUDIOS_ACTIVITY_WRITE_SECONDS:
        return
    _written[studio_id] = now
    try:
        await database_sync_to_async(_write)(studio_id, user)
    except Error as error:
        log.warning("last activity of studio %s not written: %s", studio_id, error)


def _write(studio_id, user):
    Studio.objects.filter(pk=studio_id).update(last_activity=timezone.now(), last_active_user=user)
