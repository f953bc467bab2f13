"""The activity log (``Event``), and a studio's last activity: when a member last used its session, and who.

The lifecycle service records each change of a studio as it makes it (``record``, inside its transaction), and
presence records each member's connections to a session (``connections_changed``): the first open and the last
close per member and session, so that a member who reloads a page a hundred times is one entry.

The proxy reports every request a browser makes to a session and every WebSocket frame it sends. The proxy
is a hot path, so each of its processes writes a studio's activity at most once every
STUDIOS_ACTIVITY_WRITE_SECONDS: the time shown is that precise. A write that fails (the database is down for a
moment) is logged and skipped: it must never fail the request or close the member's WebSocket.
"""

import logging
import time

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import Error
from django.utils import timezone

from .models import Event, SessionConnection, StopReason, Studio, StudioStatus

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


def record(kind, studio, actor=None, *, session=None, reason="", message="", seconds=None, **details):
    """Add an event of ``studio`` to the log; for callers inside their own transaction."""
    return Event.objects.create(
        workspace_id=studio.workspace_id,
        studio=studio,
        studio_name=studio.name,
        session=session,
        kind=kind,
        actor=actor,
        reason=reason,
        message=message,
        seconds=seconds,
        details=details,
    )


def record_start(studio, session, actor):
    """A start: with what resources, from which checkpoint."""
    source = session.restored_from
    return record(
        Event.Kind.STARTED,
        studio,
        actor,
        session=session,
        cpus=session.cpus,
        memory_mb=session.memory_mb,
        checkpoint=source.name if source else "",
    )


def record_running(studio, session):
    seconds = (timezone.now() - session.started).total_seconds()
    return record(Event.Kind.RUNNING, studio, session=session, seconds=seconds)


def record_stop(studio, actor, reason):
    """A stop was asked for (``reason``: a ``StopReason``); ``record_end`` completes it."""
    if reason not in StopReason.values or reason == StopReason.ERROR:
        raise ValueError(f"not a reason to stop: {reason!r}")
    return record(Event.Kind.STOPPED, studio, actor, session=studio.session, reason=reason)


def record_end(studio, session, status, reason):
    """The session ended: its stops are complete (when it was gone, what may be lost); an errored one gets its
    event."""
    now = session.ended
    seconds = round((now - session.started).total_seconds(), 1)
    stops = Event.objects.filter(session=session, kind=Event.Kind.STOPPED, ended=None)
    if status == StudioStatus.ERRORED:
        stops.update(ended=now)
        record(
            Event.Kind.ERRORED,
            studio,
            session=session,
            reason=StopReason.ERROR,
            message=reason,
            session_seconds=seconds,
        )
    else:
        for stop in stops:
            stop.ended, stop.message, stop.seconds = now, reason, (now - stop.at).total_seconds()
            stop.details["session_seconds"] = seconds
            stop.save(update_fields=["ended", "message", "seconds", "details"])
    Event.objects.filter(session=session, kind=Event.Kind.CONNECTED, ended=None).update(ended=now)


def connections_changed(studio_id, before, after):
    """The members connected to a studio were ``before`` and are ``after`` (sets of user ids): a member who came
    starts (or resumes) their connection of the current session; one who left ends it. Called under the studio's
    lock."""
    if before == after:
        return
    studio = Studio.objects.select_related("session").filter(pk=studio_id).first()
    if studio is None:
        return
    now = timezone.now()
    session = studio.session
    connections = Event.objects.filter(kind=Event.Kind.CONNECTED, studio=studio)
    for user_id in after - before:
        resumed = connections.filter(session=session, actor_id=user_id).update(ended=None)
        if not resumed:
            Event.objects.create(
                workspace_id=studio.workspace_id,
                studio=studio,
                studio_name=studio.name,
                session=session,
                kind=Event.Kind.CONNECTED,
                actor_id=user_id,
                at=now,
            )
    left = before - after
    if left:
        connections.filter(actor_id__in=left, ended=None).update(ended=now)


def connections_forgotten(studio_ids):
    """The connections of dead web processes were forgotten: end those of members no longer connected."""
    now = timezone.now()
    for studio_id in studio_ids:
        connected = SessionConnection.objects.filter(studio_id=studio_id).values("user_id")
        open_ = Event.objects.filter(kind=Event.Kind.CONNECTED, studio_id=studio_id, ended=None)
        open_.exclude(actor_id__in=connected).update(ended=now)
