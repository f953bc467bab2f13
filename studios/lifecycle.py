"""The studio lifecycle: the only module that changes a studio's status.

Each use case checks the acting user's role, the studio's current status and the workspace's
limits, changes rows in a transaction under row locks, and dispatches Celery work with
``transaction.on_commit`` so that a worker never sees a status that was rolled back.
Starts lock the workspace row first, which serialises the running-studio cap and the
exclusive-mount rule; the unique constraint on ``ActiveMount`` backs the latter up.
"""

import logging
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from checkpoints import records

from . import permissions
from .supervisor import protocol
from .models import (
    ACTIVE_STATUSES,
    ActiveMount,
    Session,
    Studio,
    StudioStatus,
    Workspace,
    data_paths_overlap,
    normalize_data_path,
)

log = logging.getLogger(__name__)


class ActionRefused(Exception):
    """The action is not possible now; the message tells the user why and what to do."""


# The first start-up step; the session agent reports the ones after it as it gets to them.
FIRST_STEP = {"name": protocol.PROVISIONING, "state": "in-progress", "message": ""}


def add_studio(user, workspace, *, datasets=(), **fields):
    """Create a stopped studio. Fields are validated by the caller's form; the role is checked here."""
    permissions.require_role(user, workspace, permissions.MAINTAIN, "add studios")
    try:
        with transaction.atomic():
            studio = Studio.objects.create(workspace=workspace, author=user, **fields)
            studio.datasets.set(datasets)
    except IntegrityError:
        raise ActionRefused(f"A studio named {fields.get('name')!r} already exists in this workspace.") from None
    log.info("studio %s added by %s", studio.pk, user)
    return studio


def _lock(studio_id):
    return Studio.objects.select_for_update().select_related("compute_environment").get(pk=studio_id)


def start_studio(user, studio, *, cpus=None, memory_mb=None, datasets=None):
    """Move a stopped or errored studio to starting and ask a worker to launch its session."""
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "start studios")
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().get(pk=studio.workspace_id)
        studio = _lock(studio.pk)
        if not studio.can_start:
            raise ActionRefused(f"{studio.name} is {studio.status}; only a stopped or errored studio can be started.")
        environment = studio.compute_environment
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
        _hold_mounts(studio)
        session = Session.objects.create(
            studio=studio,
            token=secrets.token_urlsafe(32),
            started_by=user,
            cpus=studio.cpus,
            memory_mb=studio.memory_mb,
            steps=[dict(FIRST_STEP)],
            restored_from=records.restore_source(studio),
            checkpoint=records.new_session_checkpoint(studio),
        )
        studio.session = session
        studio.transition(StudioStatus.STARTING)
        studio.save()
        transaction.on_commit(lambda: _dispatch("launch_session", session.pk))
    log.info("studio %s start requested by %s", studio.pk, user)
    return studio


def start_as_new(user, checkpoint, *, name, description="", datasets=(), cpus, memory_mb):
    """A new studio with the parent's template, compute environment and checkpoint history, started
    from ``checkpoint``. Later changes to either studio never touch the other."""
    parent = checkpoint.studio
    permissions.require_role(user, parent.workspace, permissions.MAINTAIN, "start studios as new")
    if parent.active_session is not None and parent.active_session.checkpoint_id == checkpoint.pk:
        raise ActionRefused(
            f"Checkpoint {checkpoint.name} is in use by {parent.name}'s running session; "
            "choose another checkpoint, or stop the studio and start it as new."
        )
    if not checkpoint.restorable:
        raise ActionRefused(f"Checkpoint {checkpoint.name} has no saved content ({checkpoint.state}); choose another.")
    with transaction.atomic():
        clone = add_studio(
            user,
            parent.workspace,
            name=name,
            description=description or parent.name,
            template=parent.template,
            template_version=parent.template_version,
            compute_environment=parent.compute_environment,
            cpus=cpus,
            memory_mb=memory_mb,
            datasets=datasets,
        )
        clone.parent_checkpoint = records.copy_history(parent, clone, checkpoint)
        clone.save(update_fields=["parent_checkpoint"])
        return start_studio(user, clone)


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
            raise ActionRefused(f"Dataset {dataset.name} ({dataset.uri}) is already mounted by another studio.") from None


def stop_studio(user, studio):
    """Move a running studio to stopping and ask a worker to end its session."""
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "stop studios")
    with transaction.atomic():
        studio = _lock(studio.pk)
        if studio.status == StudioStatus.STARTING:
            raise ActionRefused(f"{studio.name} is still starting; stop it once it is running.")
        if not studio.can_stop:
            raise ActionRefused(f"{studio.name} is {studio.status}; only a running studio can be stopped.")
        studio.transition(StudioStatus.STOPPING)
        studio.save()
        transaction.on_commit(lambda: _dispatch("stop_session", studio.pk))
    log.info("studio %s stop requested by %s", studio.pk, user)
    return studio


def force_stop_studio(user, studio):
    """Mark a studio whose stop has not finished stopped now, and end its compute without waiting for it."""
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "force stop studios")
    with transaction.atomic():
        studio = _lock(studio.pk)
        if studio.status != StudioStatus.STOPPING:
            raise ActionRefused(f"{studio.name} is {studio.status}; only a studio that is stopping can be force stopped.")
        if not studio.can_force_stop:
            raise ActionRefused(
                f"{studio.name} is still saving its final checkpoint; force stop is offered once a stop has taken "
                f"{settings.STUDIOS_FORCE_STOP_AFTER_SECONDS // 60} minutes."
            )
        environment_id, handle = studio.compute_environment_id, studio.session.handle
        reason = _possible_loss(studio, f"Force stopped by {user} before the session saved a final checkpoint")
        _end_session(studio, StudioStatus.STOPPED, reason)
        if handle:
            transaction.on_commit(lambda: _dispatch("end_compute", environment_id, handle))
    log.info("studio %s force stopped by %s", studio.pk, user)
    return studio


def delete_studio(user, studio):
    permissions.require_role(user, studio.workspace, permissions.MAINTAIN, "delete studios")
    with transaction.atomic():
        studio = _lock(studio.pk)
        if not studio.can_delete:
            raise ActionRefused(f"{studio.name} is {studio.status}; stop it before deleting it.")
        work_dir = studio.compute_environment.work_dir
        studio.delete()
        transaction.on_commit(lambda: _clean_checkpoints(work_dir))
    log.info("studio %s (%s) deleted by %s", studio.pk, studio.name, user)


# What sessions and workers report. These take no user: the session token or the task is the authority.


def _by_token(token):
    """The active session holding ``token``, locked with its studio; None for anything else."""
    if not token:
        return None
    session = Session.objects.select_for_update().select_related("studio").filter(token=token, ended=None).first()
    if session is None or session.studio.session_id != session.pk:
        return None
    return session


def _session(session_id):
    return Session.objects.select_for_update().select_related("studio").filter(pk=session_id, ended=None).first()


def session_progress(token, steps):
    with transaction.atomic():
        session = _by_token(token)
        if session is None or session.studio.status != StudioStatus.STARTING:
            return False
        session.steps = steps
        session.save(update_fields=["steps"])
    return True


def session_ready(token, steps):
    """The supervisor says its IDE answers. The studio runs once the platform knows where to reach it, which
    only the backend says (a report never does)."""
    with transaction.atomic():
        session = _by_token(token)
        if session is None or session.studio.status != StudioStatus.STARTING:
            return False
        session.steps = steps
        session.ready = True
        session.save(update_fields=["steps", "ready"])
        _run_if_reachable(session)
        if not session.endpoint:
            session_id = session.pk
            transaction.on_commit(lambda: _dispatch("locate_session", session_id))
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
        studio.transition(StudioStatus.RUNNING)
        studio.save()
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
            session.steps = steps
            session.save(update_fields=["steps"])
        session_id = session.pk
        transaction.on_commit(lambda: _dispatch("reap_session", session_id, reason))
    return True


def session_checkpoint_saved(token, manifest_key, manifest_sha256, size_bytes, final, layer_used_bytes, layer_total_bytes):
    with transaction.atomic():
        session = _by_token(token)
        if session is None or session.checkpoint_id is None:
            return False
        session.layer_used_bytes, session.layer_total_bytes = layer_used_bytes, layer_total_bytes or None
        session.save(update_fields=["layer_used_bytes", "layer_total_bytes"])
        return records.record_saved(session.checkpoint_id, manifest_key, manifest_sha256, size_bytes, final)


def record_launch(session_id, handle):
    """Keep the backend's handle (what the session has or will have on the host, and where it is reached);
    False when the start was superseded, so the caller ends what it launched."""
    with transaction.atomic():
        session = _session(session_id)
        if session is None or session.studio.session_id != session.pk:
            return False
        if session.studio.status not in (StudioStatus.STARTING, StudioStatus.RUNNING):
            return False
        session.handle = handle
        session.endpoint = session.endpoint or handle.get("endpoint", "")
        session.control_endpoint = session.control_endpoint or handle.get("control", "")
        session.save(update_fields=["handle", "endpoint", "control_endpoint"])
        _run_if_reachable(session)
    return True


def fail_studio(studio_id, reason, expected=ACTIVE_STATUSES):
    """Make a studio errored with a reason, if it is still in one of the ``expected`` statuses."""
    with transaction.atomic():
        studio = Studio.objects.select_for_update().filter(pk=studio_id).first()
        if studio is None or studio.status not in expected:
            return False
        _end_session(studio, StudioStatus.ERRORED, reason)
    log.warning("studio %s errored: %s", studio_id, reason)
    return True


def session_stopped(studio_id, unsaved=""):
    """The session's compute has ended; ``unsaved`` says why its final checkpoint may be missing."""
    with transaction.atomic():
        studio = Studio.objects.select_for_update().filter(pk=studio_id).first()
        if studio is None or studio.status != StudioStatus.STOPPING:
            return False
        _end_session(studio, StudioStatus.STOPPED, _possible_loss(studio, unsaved) if unsaved else "")
    log.info("studio %s stopped%s", studio_id, f" ({unsaved})" if unsaved else "")
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
    return True


def _possible_loss(studio, cause):
    """Tell the user what a session that ended without its final checkpoint may have lost."""
    checkpoint = studio.session.checkpoint if studio.session else None
    if checkpoint is not None and checkpoint.saved is not None:
        saved = timezone.localtime(checkpoint.saved)
        since = f"since checkpoint {checkpoint.name} was saved at {saved:%Y-%m-%d %H:%M %Z}"
    else:
        since = "in this session (none of it was saved)"
    return f"{cause}: changes made {since} may be lost."


def _end_session(studio, status, reason=""):
    studio.transition(status, reason)
    studio.save()
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
    ActiveMount.objects.filter(studio=studio).delete()


def overdue_starts():
    limit = timezone.now() - timedelta(seconds=settings.STUDIOS_START_TIMEOUT_SECONDS)
    return Studio.objects.filter(status=StudioStatus.STARTING, status_changed__lt=limit)


def overdue_stops():
    """Stops that should have finished by now: their task is dispatched again."""
    limit = timezone.now() - timedelta(seconds=2 * settings.STUDIOS_STOP_TIMEOUT_SECONDS)
    return Studio.objects.filter(status=StudioStatus.STOPPING, status_changed__lt=limit)


def _clean_checkpoints(work_dir):
    from checkpoints.tasks import clean_store

    clean_store.delay(work_dir)


def _dispatch(task_name, *args):
    from . import tasks

    getattr(tasks, task_name).delay(*args)
