"""The studio lifecycle: the only module that changes a studio's status.

Each use case checks the acting user's role, the studio's current status and the workspace's
limits, changes rows in a transaction under row locks, and dispatches Celery work with
``transaction.on_commit`` so that a worker never sees a status that was rolled back.
Starts lock the workspace row first, which serialises the running-studio cap and the
exclusive-mount rule; the unique constraint on ``ActiveMount`` backs the latter up.
"""

import logging
import secrets
from datetime import datetime, timedelta

from celery import signature
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.http import Http404
from django.utils import timezone

from checkpoints import records

from . import activity, metrics, permissions, presence, revocation
from .exceptions import ActionRefused
from .models import (
    ACTIVE_STATUSES,
    MAX_LIFESPAN_HOURS,
    ActiveMount,
    Event,
    Session,
    StopReason,
    Studio,
    StudioStatus,
    Workspace,
    data_paths_overlap,
    normalize_data_path,
)
from .supervisor import protocol

log = logging.getLogger(__name__)


# A task working on a start or a stop claims its session at least this often (``claim``): a claim older than
# this means no task works on it any more, and the reconcile queues the work again.
TASK_STALE_SECONDS = 20

# The tasks this module queues (``dispatch``).
LAUNCH_SESSION = "studios.tasks.launch_session"
STOP_SESSION = "studios.tasks.stop_session"
FOLLOW_START = "studios.tasks.follow_start"
REAP_SESSION = "studios.tasks.reap_session"
EXTEND_SESSION = "studios.tasks.extend_session"
CHECK_COMPUTE_ENVIRONMENT = "studios.tasks.check_compute_environment"
CLEAN_STORE = "checkpoints.tasks.clean_store"

# The first start-up step; the session agent reports the ones after it as it gets to them.
FIRST_STEP = {"name": protocol.PROVISIONING, "state": "in-progress", "message": ""}


def add_studio(user, workspace, *, datasets=(), start=False, **fields):
    """Create a stopped studio, and start it when ``start`` (when the start is refused, nothing is added). Fields
    are validated by the caller's form; the role is checked here."""
    permissions.require_role(user, workspace, permissions.MAINTAIN, "add studios")
    if fields.get("lifespan_hours") is None:
        fields["lifespan_hours"] = workspace.default_lifespan_hours
    fields.setdefault("idle_stop_minutes", workspace.idle_stop_minutes)
    with transaction.atomic():
        studio = _create(user, workspace, datasets, fields)
        activity.record(Event.Kind.ADDED, studio, user)
        presence.studio_changed(studio, added=True)
        log.info("studio %s added by %s", studio.pk, user)
        if start:
            studio = start_studio(user, studio)
    return studio


def _create(user, workspace, datasets, fields):
    try:
        with transaction.atomic():
            studio = Studio.objects.create(workspace=workspace, author=user, **fields)
            studio.datasets.set(datasets)
    except IntegrityError:
        raise ActionRefused(f"A studio named {fields.get('name')!r} already exists in this workspace.") from None
    return studio


def change_studio(
    user, studio, *, name, description, cpus, memory_mb, datasets, lifespan_hours=None, idle_stop_minutes=None
):
    """Change a stopped or errored studio's name, description, resources, mounts and lifespan (validated by the
    caller's form); a studio with a session keeps what it started with until it is stopped."""
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "change studios")
    try:
        with transaction.atomic():
            studio = _lock(studio.pk)
            if not studio.can_start:
                raise ActionRefused(f"{studio.name} is {studio.status}; stop it before changing it.")
            if name != studio.name:
                activity.record(Event.Kind.RENAMED, studio, user, old=studio.name, new=name)
            studio.name, studio.description, studio.cpus, studio.memory_mb = name, description, cpus, memory_mb
            if lifespan_hours is not None:
                studio.lifespan_hours = lifespan_hours
            studio.idle_stop_minutes = idle_stop_minutes
            studio.save(
                update_fields=["name", "description", "cpus", "memory_mb", "lifespan_hours", "idle_stop_minutes"]
            )
            studio.datasets.set(datasets)
            presence.studio_changed(studio)
    except IntegrityError:
        raise ActionRefused(f"A studio named {name!r} already exists in this workspace.") from None
    log.info("studio %s changed by %s", studio.pk, user)
    return studio


def _transition(studio, status, reason=""):
    """Change the studio's status and save it; once committed, the pages of its workspace show it, and the sockets
    of a session that no longer runs check their access again (``revocation``)."""
    studio.transition(status, reason)
    studio.save()
    if status != StudioStatus.RUNNING:
        revocation.tell(revocation.studio_group(studio.pk))
    presence.studio_changed(studio)


def _lock(studio_id):
    """The studio, locked; Http404 when it was deleted meanwhile (a start racing a delete, two deletes)."""
    studio = (
        Studio.objects.select_for_update(of=("self",))
        .select_related("compute_environment", "session")
        .filter(pk=studio_id)
        .first()
    )
    if studio is None:
        raise Http404("No such studio")
    return studio


def start_studio(user, studio, *, cpus=None, memory_mb=None, datasets=None, lifespan_hours=None):
    """Move a stopped or errored studio to starting and ask a worker to launch its session, which is stopped once
    its lifespan has passed (``stop_when_due``)."""
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "start studios")
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().get(pk=studio.workspace_id)
        studio = _lock(studio.pk)
        if not studio.can_start:
            raise ActionRefused(f"{studio.name} is {studio.status}; only a stopped or errored studio can be started.")
        environment = studio.compute_environment
        if environment.status == environment.Status.CHECKING:
            raise ActionRefused(f"Compute environment {environment.name} is being checked; try again in a moment.")
        if environment.status != environment.Status.AVAILABLE:
            raise ActionRefused(
                f"Compute environment {environment.name} is {environment.status}: {environment.status_reason} "
                "Ask an admin of the workspace to fix it."
            )
        cap = workspace.max_running_studios
        if cap is not None and Studio.objects.filter(workspace=workspace, status__in=ACTIVE_STATUSES).count() >= cap:
            raise ActionRefused(
                f"This workspace allows {cap} running studio{'s' if cap != 1 else ''} at once; stop one first."
            )
        if cpus is not None:
            studio.cpus = cpus
        if memory_mb is not None:
            studio.memory_mb = memory_mb
        if datasets is not None:
            studio.datasets.set(datasets)
        if lifespan_hours is not None:
            studio.lifespan_hours = lifespan_hours
        _hold_mounts(studio)
        now = timezone.now()
        session = Session.objects.create(
            studio=studio,
            token=secrets.token_urlsafe(32),
            started_by=user,
            started=now,
            stops_at=now + timedelta(hours=studio.lifespan_hours),
            cpus=studio.cpus,
            memory_mb=studio.memory_mb,
            steps=[dict(FIRST_STEP)],
            restored_from=records.restore_source(studio),
            checkpoint=records.new_session_checkpoint(studio),
        )
        studio.session = session
        studio.template_version = environment.template_version(studio.template)[:20]  # its image's tag, as it starts
        _transition(studio, StudioStatus.STARTING)
        activity.record_start(studio, session, user)
        transaction.on_commit(lambda: dispatch(LAUNCH_SESSION, session.pk))
    log.info("studio %s start requested by %s", studio.pk, user)
    return studio


def start_as_new(
    user,
    checkpoint,
    *,
    name,
    description="",
    datasets=(),
    cpus,
    memory_mb,
    lifespan_hours=None,
    idle_stop_minutes=None,
    start=True,
):
    """A new studio with the parent's template, compute environment and checkpoint history, started
    from ``checkpoint``; or, when not ``start`` (add as new), stopped, its first start restoring ``checkpoint``.
    Later changes to either studio never touch the other."""
    parent = checkpoint.studio
    action = "start studios as new" if start else "add studios as new"
    permissions.require_role(user, parent.workspace, permissions.MAINTAIN, action)
    if parent.active_session is not None and parent.active_session.checkpoint_id == checkpoint.pk:
        raise ActionRefused(
            f"Checkpoint {checkpoint.name} is in use by {parent.name}'s running session; "
            "choose another checkpoint, or stop the studio and start it as new."
        )
    if not checkpoint.restorable:
        raise ActionRefused(f"Checkpoint {checkpoint.name} has no saved content ({checkpoint.state}); choose another.")
    with transaction.atomic():
        clone = _create(
            user,
            parent.workspace,
            datasets,
            {
                "name": name,
                "description": description,
                "template": parent.template,
                "template_version": parent.template_version,
                "compute_environment": parent.compute_environment,
                "cpus": cpus,
                "memory_mb": memory_mb,
                "lifespan_hours": parent.workspace.default_lifespan_hours if lifespan_hours is None else lifespan_hours,
                "idle_stop_minutes": idle_stop_minutes,
            },
        )
        clone.parent_checkpoint = records.copy_history(parent, clone, checkpoint)
        clone.save(update_fields=["parent_checkpoint"])
        activity.record(Event.Kind.STARTED_AS_NEW, clone, user, source_studio=parent.name, checkpoint=checkpoint.name)
        log.info("studio %s added by %s from checkpoint %s", clone.pk, user, checkpoint.pk)
        return start_studio(user, clone) if start else clone


def held_data_paths(workspace, exclude_studio=None):
    """Data paths held by starting or running studios: {data path: studio}."""
    mounts = ActiveMount.objects.filter(workspace=workspace).select_related("studio")
    if exclude_studio is not None:
        mounts = mounts.exclude(studio=exclude_studio)
    return {mount.data_path: mount.studio for mount in mounts}


def holder_of(uri, held):
    """The studio among ``held`` whose data path overlaps ``uri``, if any."""
    return next((studio for path, studio in held.items() if data_paths_overlap(path, uri)), None)


def _hold_mounts(studio):
    held = held_data_paths(studio.workspace, exclude_studio=studio)
    ActiveMount.objects.filter(studio=studio).delete()
    for dataset in studio.datasets.all():
        holder = holder_of(dataset.uri, held)
        if holder is not None:
            raise ActionRefused(
                f"Dataset {dataset.name} ({dataset.uri}) is mounted by running studio {holder.name}; "
                "stop that studio or start without this dataset."
            )
        try:
            with transaction.atomic():
                ActiveMount.objects.create(
                    workspace_id=studio.workspace_id,
                    studio=studio,
                    dataset=dataset,
                    data_path=normalize_data_path(dataset.uri),
                    writable=studio.compute_environment.is_writable(dataset.uri),
                )
        except IntegrityError:
            raise ActionRefused(
                f"Dataset {dataset.name} ({dataset.uri}) is already mounted by another studio."
            ) from None


def stop_studio(user, studio, reason=StopReason.USER):
    """Move a starting or running studio to stopping and ask a worker to end its session. ``user`` None: the
    platform stops it itself, for ``reason`` (a ``StopReason``: lifespan, idle), which the activity log keeps."""
    if user is not None:
        permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "stop studios")
    elif reason == StopReason.USER:
        raise ValueError("a stop by a member names the member")
    with transaction.atomic():
        studio = _lock(studio.pk)
        if not studio.can_stop:
            raise ActionRefused(f"{studio.name} is {studio.status}; only a starting or running studio can be stopped.")
        _begin_stop(studio, user, reason)
    log.info("studio %s stop (%s) requested by %s", studio.pk, reason, user)
    return studio


def _begin_stop(studio, actor, kind, reason=""):
    """Stopping, the normal way: a worker asks the session for its final checkpoint, then ends it. ``kind``: the
    activity log's ``StopReason``; ``reason``: why the platform stops it, shown while it stops and once it has
    stopped."""
    _transition(studio, StudioStatus.STOPPING, reason)
    if reason:
        Session.objects.filter(pk=studio.session_id).update(stop_reason=reason)
    activity.record_stop(studio, actor, kind)
    transaction.on_commit(lambda: dispatch(STOP_SESSION, studio.pk))


def extend_studio(user, studio, hours):
    """Stop a starting or running studio ``hours`` later than its lifespan says, within MAX_LIFESPAN_HOURS of its
    session's start. ``hours`` is a whole number of 1 or more (the caller's form says so)."""
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "extend studios")
    with transaction.atomic():
        studio = _lock(studio.pk)
        session = studio.active_session
        if not studio.can_stop or session is None or session.stops_at is None:
            raise ActionRefused(f"{studio.name} is {studio.status}; only a starting or running studio can be extended.")
        latest = session.started + timedelta(hours=MAX_LIFESPAN_HOURS)
        room = int((latest - session.stops_at) / timedelta(hours=1))
        if hours > room:
            more = f"by at most {room} more hour{'s' if room != 1 else ''}" if room else "no further"
            raise ActionRefused(
                f"A session runs at most {MAX_LIFESPAN_HOURS} hours from its start; {studio.name} can be extended "
                f"{more}."
            )
        session.stops_at += timedelta(hours=hours)
        session.save(update_fields=["stops_at"])
        transaction.on_commit(lambda: dispatch(EXTEND_SESSION, session.pk))
        presence.studio_changed(studio)  # the new stop time, and its warning gone, on every page showing it
    log.info("studio %s extended by %s h by %s", studio.pk, hours, user)
    return studio


def _automatic_stop_candidates():
    """Starting or running studios that may have an automatic stop ahead: a lifespan, or an idle stop."""
    return (
        Studio.objects.filter(status__in=(StudioStatus.STARTING, StudioStatus.RUNNING), session__ended=None)
        .filter(Q(session__stops_at__isnull=False) | Q(idle_stop_minutes__isnull=False))
        .select_related("session")
    )


def stops_to_warn():
    """[(studio id, session id, when)]: automatic stops within the warning period that nobody was warned of."""
    due = []
    for studio in _automatic_stop_candidates():
        warning = studio.stop_warning
        if warning is not None and studio.session.warned_for != warning[0]:
            due.append((studio.pk, studio.session_id, warning[0]))
    return due


def claim_warning(session_id, when):
    """Whether this caller is the one to warn of the session's stop at ``when`` (one of several workers, once)."""
    unwarned = Session.objects.filter(pk=session_id, ended=None).exclude(warned_for=when)
    return bool(unwarned.update(warned_for=when))


def due_stops():
    """Ids of the studios whose next automatic stop is due."""
    now = timezone.now()
    return [studio.pk for studio in _automatic_stop_candidates() if (studio.next_stop or (now,))[0] <= now]


def stop_when_due(studio_id):
    """Stop a studio whose lifespan ran out or that was idle for its idle stop, the normal way (a final
    checkpoint), saying why; whether it did. Only a stop its members were warned of is made (``stops_to_warn``):
    one not warned of yet (no beat ran for a while) is warned of first, and made at a later tick. Safe to run twice
    and on several workers at once: the studio's lock and status decide."""
    with transaction.atomic():
        studio = Studio.objects.select_for_update(of=("self",)).select_related("session").filter(pk=studio_id).first()
        session = studio.active_session if studio is not None else None
        if studio is None or session is None or not studio.can_stop:
            return False
        stop = studio.next_stop
        if stop is None or stop[0] > timezone.now() or session.warned_for != stop[0]:
            return False
        _begin_stop(studio, None, stop[2], stop[1])
    log.info("studio %s stopping: %s", studio_id, stop[1])
    return True


def keep_studio(user, studio):
    """A member says they still use an idle studio: as a request of theirs through the proxy would, this moves its
    idle stop later."""
    permissions.require_role(user, studio.workspace, permissions.CONNECT, "keep studios running")
    if studio.status != StudioStatus.RUNNING:
        raise ActionRefused(f"{studio.name} is {studio.status}; only a running studio can be kept running.")
    Studio.objects.filter(pk=studio.pk).update(last_activity=timezone.now(), last_active_user=user)
    presence.studio_changed(studio)  # the idle warning goes from every page showing it


def force_stop_studio(user, studio):
    """End the compute of a studio whose stop has not finished, without waiting for a final checkpoint; the studio
    shows stopped once its compute is gone."""
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "force stop studios")
    with transaction.atomic():
        studio = _lock(studio.pk)
        if studio.status != StudioStatus.STOPPING:
            raise ActionRefused(
                f"{studio.name} is {studio.status}; only a studio that is stopping can be force stopped."
            )
        if not studio.can_force_stop:
            raise ActionRefused(
                f"{studio.name} is still saving its final checkpoint; force stop is offered once a stop has taken "
                f"{settings.STUDIOS_FORCE_STOP_AFTER_SECONDS // 60} minutes."
            )
        username = user.get_username()
        activity.record_stop(studio, user, StopReason.FORCE)
        transaction.on_commit(lambda: dispatch(STOP_SESSION, studio.pk, username))
    log.info("studio %s force stopped by %s", studio.pk, user)
    return studio


def delete_studio(user, studio):
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "delete studios")
    with transaction.atomic():
        studio = _lock(studio.pk)
        if not studio.can_delete:
            raise ActionRefused(f"{studio.name} is {studio.status}; stop it before deleting it.")
        work_dir, studio_id = studio.compute_environment.work_dir, studio.pk
        activity.record(Event.Kind.DELETED, studio, user)
        presence.studio_changed(studio)
        studio.delete()
        transaction.on_commit(lambda: dispatch(CLEAN_STORE, work_dir, protocol.manifest_prefix(studio_id)))
    log.info("studio %s (%s) deleted by %s", studio_id, studio.name, user)


# What sessions and workers report. These take no user: the session token or the task is the authority.


def _locked_session(**match):
    """The unended session that ``match`` finds, with its studio, both locked: the studio first, as every change of
    a studio locks it (locking both in one query locks the session first, and a report then deadlocked with the
    reconcile); None when there is none."""
    found = Session.objects.filter(ended=None, **match).values_list("pk", "studio_id").first()
    if found is None:
        return None
    Studio.objects.select_for_update().filter(pk=found[1]).values_list("pk", flat=True).first()
    return (
        Session.objects.select_for_update()
        .select_related("studio")
        .filter(ended=None, **match)
        .filter(pk=found[0])
        .first()
    )


def _by_token(token):
    """The active session holding ``token``, locked with its studio; None for anything else."""
    if not token:
        return None
    session = _locked_session(token=token)
    if session is None or session.studio.session_id != session.pk:
        return None
    return session


def redeem_ticket(ticket):
    """The session token, for the supervisor of a starting session that presents its start ticket (the SHA-256 in
    its handle) for the first time; None for anything else. A ticket presented again while its session starts
    ends that start: whoever presented it first holds the token, and the one who did not may be its supervisor.
    Once the session runs, or its start has timed out, a ticket is only refused. Each refusal is logged."""
    if not ticket:
        return None
    digest = protocol.ticket_sha256(ticket)
    with transaction.atomic():
        session = _locked_session(handle__ticket_sha256=digest)
        if session is None or session.studio.session_id != session.pk:
            log.warning("start ticket refused: no session has it")
            return None
        studio = session.studio
        valid_until = session.started + timedelta(seconds=settings.STUDIOS_START_TIMEOUT_SECONDS)
        if studio.status != StudioStatus.STARTING or timezone.now() > valid_until:
            log.warning("studio %s: start ticket refused: the session is %s", studio.pk, studio.status)
            return None
        if session.redeemed_ticket == digest:
            reason = (
                "The session's start ticket was presented twice, so someone who can read its job (in AWS Batch, "
                "whoever may call DescribeJobs) may have taken the session's token; the start was ended. Start the "
                "studio again, and check who may read the compute environment's jobs."
            )
            log.warning("studio %s: start ticket presented again; ending the start", studio.pk)
            session.token = None  # whoever holds it can no longer act as the session
            session.end_reason = reason
            session.save(update_fields=["token", "end_reason"])
            session_id = session.pk
            transaction.on_commit(lambda: dispatch(REAP_SESSION, session_id, reason))
            return None
        session.redeemed_ticket = digest
        session.save(update_fields=["redeemed_ticket"])
        log.info("studio %s: start ticket redeemed", studio.pk)
        return session.token


def _session(session_id):
    return _locked_session(pk=session_id)


def session_progress(token, steps):
    with transaction.atomic():
        session = _by_token(token)
        if session is None or session.studio.status != StudioStatus.STARTING:
            return False
        session.steps = _merged_steps(session.steps, steps)
        # A supervisor that reports exists: launched, even when the worker that launched it died before saying so.
        session.launched = True
        session.save(update_fields=["steps", "launched"])
        presence.studio_changed(session.studio)
    return True


def _merged_steps(recorded, reported):
    """The start-up steps with a report's: each reported step replaces the recorded one of its name, and the others
    stay (a session's host reports the image's pull before its supervisor reports the steps after it)."""
    steps = {step["name"]: step for step in recorded} | {step["name"]: step for step in reported}
    return sorted(steps.values(), key=lambda step: protocol.STEP_NAMES.index(step["name"]))


def session_ready(token, steps):
    """The supervisor says its IDE answers. The studio runs once the platform knows where to reach it, which
    only the backend says (a report never does)."""
    with transaction.atomic():
        session = _by_token(token)
        if session is None or session.studio.status != StudioStatus.STARTING:
            return False
        session.steps = _merged_steps(session.steps, steps)
        session.ready = session.launched = True
        session.save(update_fields=["steps", "ready", "launched"])
        presence.studio_changed(session.studio)
        _run_if_reachable(session)
        if not session.endpoint:
            session_id = session.pk
            transaction.on_commit(lambda: dispatch(FOLLOW_START, session_id))
    return True


def session_located(session_id, endpoint, control_endpoint):
    """The backend found where a starting session is reached (a Batch job's host)."""
    with transaction.atomic():
        session = _session(session_id)
        if session is None or session.endpoint:
            return False
        session.endpoint, session.control_endpoint = endpoint, control_endpoint
        session.save(update_fields=["endpoint", "control_endpoint"])
        _run_if_reachable(session)
    return True


def _run_if_reachable(session):
    studio = session.studio
    if session.ready and session.endpoint and studio.status == StudioStatus.STARTING:
        _transition(studio, StudioStatus.RUNNING)
        activity.record_running(studio, session)
        log.info("studio %s running", studio.pk)


def session_failed(token, reason, checkpoint_invalid=False, steps=None):
    """The supervisor says the session cannot go on. The studio is errored only once its compute is gone
    (``reap_session``), whoever sent the report; ``checkpoint_invalid`` when its restore failed verification."""
    with transaction.atomic():
        session = _by_token(token)
        if session is None or session.studio.status not in (StudioStatus.STARTING, StudioStatus.RUNNING):
            return False
        if checkpoint_invalid and session.restored_from is not None:
            records.mark_invalid(session.restored_from, reason)
        if steps is not None:
            session.steps = _merged_steps(session.steps, steps)
        # Kept for whichever ends the studio first: this session's reaping, or a reconcile that finds it gone.
        session.end_reason = reason
        session.save(update_fields=["steps", "end_reason"])
        presence.studio_changed(session.studio)
        session_id = session.pk
        transaction.on_commit(lambda: dispatch(REAP_SESSION, session_id, reason))
    return True


def session_working(token):
    """The supervisor saw the session's IDE working: the studio is not idle. (The session may lie, which keeps only
    its own studio running: a cost to its own workspace.)"""
    return bool(
        Session.objects.filter(
            token=token, ended=None, studio__status=StudioStatus.RUNNING, studio__session=F("pk")
        ).update(last_work=timezone.now())
    )


def session_pages_saved(token, saved, unsaved):
    """As its session stops, ``saved`` of the pages open in it saved their documents and ``unsaved`` did not in time;
    the stop says so while it goes on and once it has ended. (A page may lie, about its own documents only.)"""
    with transaction.atomic():
        session = _by_token(token)
        if session is None or session.studio.status != StudioStatus.STOPPING:
            return False
        session.unsaved_pages = unsaved
        session.save(update_fields=["unsaved_pages"])
        studio = session.studio
        studio.status_reason = _stop_reason(session)
        studio.save(update_fields=["status_reason"])
        presence.studio_changed(studio)
    log.info("studio %s: %s pages saved their documents as it stopped, %s did not", studio.pk, saved, unsaved)
    return True


def _stop_reason(session):
    """Why the platform stopped the session (empty when a member did), and whether pages open in it could not save."""
    unsaved = session.unsaved_pages
    if not unsaved:
        return session.stop_reason
    pages = "A page open in the session" if unsaved == 1 else f"{unsaved} pages open in the session"
    their = "its" if unsaved == 1 else "their"
    note = f"{pages} could not save {their} documents in time: their unsaved changes are lost."
    return f"{session.stop_reason} {note}".strip()


def session_checkpoint_saved(
    token, manifest_key, manifest_sha256, size_bytes, final, layer_used_bytes, layer_total_bytes, seconds=None
):
    """A checkpoint was saved (in ``seconds``, which supervisors from before they said it do not say)."""
    with transaction.atomic():
        session = _by_token(token)
        if session is None or session.checkpoint_id is None:
            return False
        session.layer_used_bytes, session.layer_total_bytes = layer_used_bytes, layer_total_bytes or None
        session.checkpoint_error, session.checkpoint_error_at = "", None
        session.save(update_fields=["layer_used_bytes", "layer_total_bytes", "checkpoint_error", "checkpoint_error_at"])
        presence.studio_changed(session.studio)
        recorded = records.record_saved(session.checkpoint_id, manifest_key, manifest_sha256, size_bytes, final)
    if recorded:
        metrics.checkpoint_saved(seconds, size_bytes)
    return recorded


def session_checkpoint_failed(token, reason):
    """A checkpoint could not be saved: the status panel says why until one is."""
    with transaction.atomic():
        session = _by_token(token)
        if session is None:
            return False
        session.checkpoint_error, session.checkpoint_error_at = reason, timezone.now()
        session.save(update_fields=["checkpoint_error", "checkpoint_error_at"])
        presence.studio_changed(session.studio)
    log.warning("studio %s: checkpoint failed: %s", session.studio_id, reason)
    return True


def record_launch(session_id, handle, launched=False, planned=None):
    """Keep the backend's handle: what the session will have on its host (before it is created) or has (once
    ``launched``), and where it is reached. False when the start was superseded, so the caller ends what it made.
    ``planned``: record it only over this handle (the reconcile adopting a job, which a start task may have
    replaced meanwhile). Recording the same launch twice (that task and the reconcile) is no supersession."""
    with transaction.atomic():
        session = _session(session_id)
        if session is None or session.studio.session_id != session.pk:
            return False
        if launched and session.launched and session.handle == handle:
            return True
        if session.studio.status != StudioStatus.STARTING or planned not in (None, session.handle):
            return False
        session.handle, session.launched = handle, launched
        session.endpoint = handle.get("endpoint", "")
        session.control_endpoint = handle.get("control", "")
        if launched:
            session.worked_on = None  # the launch task's claim: done with
        session.save(update_fields=["handle", "launched", "endpoint", "control_endpoint", "worked_on"])
        _run_if_reachable(session)
        if launched and not session.endpoint:
            transaction.on_commit(lambda: dispatch(FOLLOW_START, session_id))
    return True


def claim(session_id, claimed=None):
    """Mark that a task works on starting or stopping the session now; None when another task did so less than
    TASK_STALE_SECONDS ago. ``claimed``: this task's earlier claim (a stop's rounds), which it may renew."""
    now = timezone.now()
    stale = now - timedelta(seconds=TASK_STALE_SECONDS)
    free = Q(worked_on=None) | Q(worked_on__lt=stale)
    if claimed is not None:
        free |= Q(worked_on=datetime.fromisoformat(claimed))
    return now.isoformat() if Session.objects.filter(free, pk=session_id).update(worked_on=now) else None


def unattended_starts():
    """Starting sessions not launched that no task has worked on lately (its worker died, its message was lost)."""
    stale = timezone.now() - timedelta(seconds=TASK_STALE_SECONDS)
    sessions = Session.objects.filter(ended=None, launched=False, studio__status=StudioStatus.STARTING)
    unattended = sessions.filter(Q(worked_on__lt=stale) | Q(worked_on=None, started__lt=stale))
    return list(unattended.filter(studio__session=F("pk")).values_list("pk", flat=True))


def unattended_stops():
    """Stopping studios whose stop no task has worked on lately."""
    stale = timezone.now() - timedelta(seconds=TASK_STALE_SECONDS)
    stopping = Studio.objects.filter(status=StudioStatus.STOPPING)
    unattended = stopping.filter(Q(session__worked_on__lt=stale) | Q(session__worked_on=None, status_changed__lt=stale))
    return list(unattended.values_list("pk", flat=True))


def fail_studio(studio_id, reason, expected=ACTIVE_STATUSES):
    """Make a studio errored with a reason, if it is still in one of the ``expected`` statuses (the reason its
    session reported, when it did); a session that had been running also says what may be lost."""
    with transaction.atomic():
        studio = (
            Studio.objects.select_for_update(of=("self",))
            .select_related("session__checkpoint")
            .filter(pk=studio_id)
            .first()
        )
        if studio is None or studio.status not in expected:
            return False
        if studio.session is not None and studio.session.ended is None and studio.session.end_reason:
            reason = studio.session.end_reason  # what the session said, over what the platform inferred
        if studio.status != StudioStatus.STARTING:
            reason = _possible_loss(studio, reason)
        _end_session(studio, StudioStatus.ERRORED, reason)
    log.warning("studio %s errored: %s", studio_id, reason)
    return True


def session_stopped(studio_id, unsaved=""):
    """The session's compute has ended; ``unsaved`` says why its final checkpoint may be missing."""
    with transaction.atomic():
        studio = Studio.objects.select_for_update(of=("self",)).select_related("session").filter(pk=studio_id).first()
        if studio is None or studio.status != StudioStatus.STOPPING:
            return False
        reason = _stop_reason(studio.session) if studio.session else ""
        if unsaved:
            reason = _possible_loss(studio, f"{reason} {unsaved}".strip())
        _end_session(studio, StudioStatus.STOPPED, reason)
    log.info("studio %s stopped%s", studio_id, f" ({reason})" if reason else "")
    return True


def provisioning_progress(studio_id, message):
    """Where the backend stands provisioning a starting session's compute, until the session reports itself."""
    with transaction.atomic():
        studio = Studio.objects.select_for_update().filter(pk=studio_id, status=StudioStatus.STARTING).first()
        session = studio.session if studio is not None else None
        if session is None or not session.steps:
            return False
        step = session.steps[0]
        if step["name"] != FIRST_STEP["name"] or step["state"] != "in-progress" or step["message"] == message:
            return False
        step["message"] = message
        session.save(update_fields=["steps"])
        presence.studio_changed(studio)
    return True


def _possible_loss(studio, cause):
    """``cause``, and what a session that ended without its final checkpoint may have lost."""
    checkpoint = studio.session.checkpoint if studio.session else None
    if checkpoint is not None and checkpoint.saved is not None:
        saved = timezone.localtime(checkpoint.saved)
        since = f"since checkpoint {checkpoint.name} was saved at {saved:%Y-%m-%d %H:%M %Z}"
    else:
        since = "in this session (none of it was saved)"
    return f"{cause.rstrip('.')}. Changes made {since} may be lost."


def _end_session(studio, status, reason=""):
    _transition(studio, status, reason)
    session = studio.session
    if session is not None and session.ended is None:
        for step in session.steps:
            if step["state"] in ("pending", "in-progress") and status == StudioStatus.ERRORED:
                step["state"], step["message"] = "errored", reason
                break
        session.token = None
        session.ended = timezone.now()
        session.end_status, session.end_reason = status, reason
        session.save()
        activity.record_end(studio, session, status, reason)
    ActiveMount.objects.filter(studio=studio).delete()


def overdue_starts():
    limit = timezone.now() - timedelta(seconds=settings.STUDIOS_START_TIMEOUT_SECONDS)
    return Studio.objects.filter(status=StudioStatus.STARTING, status_changed__lt=limit)


def dispatch(task_name, *args):
    """Queue a task once the change it follows is committed. When the broker cannot be reached the change stands
    and the reconcile queues the work again within a minute (``tasks.reconcile_sessions``): a request never fails
    after its change was made.

    Tasks are sent by their registered name, as Celery routes them: the tasks modules call this module, so it
    imports neither of them."""
    try:
        signature(task_name, args=args).delay()
    except Exception:
        log.exception("could not queue %s%s; the reconcile will", task_name, args)
