"""Celery tasks: they take ids, re-read rows, and are safe to run twice or after a crash."""

import logging

import httpx
from celery import shared_task
from django.conf import settings

from . import environments, lifecycle, presence
from .backends import BackendError, Mount, SessionSpec, backend_for
from .models import ACTIVE_STATUSES, ComputeEnvironment, Session, Studio, StudioStatus

log = logging.getLogger(__name__)

# How long a session that reported its own end gets to finish taking itself down before it is killed.
REAP_GRACE_SECONDS = 10


def session_spec(session):
    studio = session.studio
    source = session.restored_from
    return SessionSpec(
        name=f"studio-{studio.pk}",
        template=studio.template,
        base_path=studio.connect_path,
        cpus=session.cpus,
        memory_mb=session.memory_mb,
        token=session.token,
        platform_url=settings.STUDIOS_PLATFORM_URL.rstrip("/"),
        work_dir=studio.compute_environment.work_dir,
        manifest_prefix=f"studio-{studio.pk}",
        mounts=[
            Mount(name=mount.dataset.name, uri=mount.dataset.uri, writable=mount.writable)
            for mount in studio.active_mounts.select_related("dataset")
        ],
        storage_quota_mb=settings.STUDIOS_WRITABLE_LAYER_MB,
        restore={"name": source.name, "manifest_key": source.manifest_key, "manifest_sha256": source.manifest_sha256}
        if source
        else {},
        labels={"workspace": str(studio.workspace), "studio": studio.name, "user": studio.author.username},
    )


@shared_task
def launch_session(session_id):
    """Plan the session (its handle names all it will create, and is recorded first), then launch it."""
    session = (
        Session.objects.select_related(
            "studio__compute_environment", "studio__workspace__organization", "studio__author", "restored_from"
        )
        .filter(pk=session_id, ended=None)
        .first()
    )
    if session is None or session.studio.status != StudioStatus.STARTING or session.handle:
        return
    try:
        backend = backend_for(session.studio.compute_environment)
        spec = session_spec(session)
        handle = backend.plan(spec)
        if not lifecycle.record_launch(session_id, handle):
            return
        handle = backend.launch(spec, handle)
    except (BackendError, OSError) as error:
        lifecycle.fail_studio(session.studio_id, f"Could not provision compute: {error}", expected={StudioStatus.STARTING})
        return
    if not lifecycle.record_launch(session_id, handle):
        log.info("studio %s: start superseded, ending the session just launched", session.studio_id)
        backend.terminate(handle, settings.STUDIOS_STOP_TIMEOUT_SECONDS)


@shared_task
def stop_session(studio_id):
    """Have the session save a final checkpoint, then end its compute; when the session does not answer in
    time, end it anyway and tell the user what may be lost."""
    studio = Studio.objects.select_related("compute_environment", "session").filter(pk=studio_id).first()
    if studio is None or studio.status != StudioStatus.STOPPING:
        return
    session = studio.session
    saved = request_checkpoint(session)
    if session.handle:
        timeout = settings.STUDIOS_STOP_TIMEOUT_SECONDS if saved else 0
        backend_for(studio.compute_environment).terminate(session.handle, timeout)
    unsaved = "" if saved else "The session did not save a final checkpoint when asked, so it was stopped anyway"
    lifecycle.session_stopped(studio_id, unsaved=unsaved)


@shared_task
def reap_session(session_id, reason):
    """A session reported it cannot go on: end its compute, then make its studio errored."""
    session = Session.objects.select_related("studio__compute_environment").filter(pk=session_id, ended=None).first()
    if session is None:
        return
    if session.handle:
        backend_for(session.studio.compute_environment).terminate(session.handle, REAP_GRACE_SECONDS)
    lifecycle.fail_studio(session.studio_id, reason, expected={StudioStatus.STARTING, StudioStatus.RUNNING})


@shared_task(bind=True, max_retries=30, default_retry_delay=2)
def locate_session(self, session_id):
    """A session reported ready before the backend knew where it is reached (a Batch job's host): ask now."""
    session = (
        Session.objects.select_related("studio__compute_environment")
        .filter(pk=session_id, ended=None, endpoint="", studio__status=StudioStatus.STARTING)
        .exclude(handle={})
        .first()
    )
    if session is None:
        return
    state = backend_for(session.studio.compute_environment).poll(session.handle)
    if state.endpoint:
        lifecycle.session_located(session_id, state.endpoint, state.control)
    elif state.alive:
        raise self.retry()


@shared_task
def end_compute(environment_id, handle):
    """End a session's compute without waiting for it (a force stop)."""
    environment = ComputeEnvironment.objects.filter(pk=environment_id).first()
    if environment is not None:
        backend_for(environment).terminate(handle, 0)


def running_sessions():
    return Session.objects.filter(ended=None, studio__status=StudioStatus.RUNNING).exclude(control_endpoint="")


@shared_task
def checkpoint_running_sessions():
    for session_id in running_sessions().values_list("pk", flat=True):
        checkpoint_session.delay(session_id)


def request_checkpoint(session):
    """Ask a session's supervisor for a checkpoint now and wait for it; whether it was saved and recorded."""
    if session is None or not session.control_endpoint:
        return False
    try:
        response = httpx.post(
            f"{session.control_endpoint}/checkpoint",
            headers={"Authorization": f"Bearer {session.token}"},
            timeout=settings.STUDIOS_STOP_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        return bool(response.json().get("recorded"))
    except (httpx.HTTPError, ValueError) as error:
        log.warning("studio %s: checkpoint failed: %s", session.studio_id, error)
        return False


@shared_task
def checkpoint_session(session_id):
    """Ask a running session's supervisor for a checkpoint now; it reports the result itself."""
    request_checkpoint(running_sessions().filter(pk=session_id).first())


def _fail_overdue_start(studio):
    reason = f"The session did not become ready within {settings.STUDIOS_START_TIMEOUT_SECONDS // 60} minutes."
    handle = studio.session.handle if studio.session else {}
    try:
        backend = backend_for(studio.compute_environment)
        reason += " " + backend.start_timeout_hint(handle)
        if handle:
            backend.terminate(handle, settings.STUDIOS_STOP_TIMEOUT_SECONDS)
    except BackendError as error:
        reason += f" Its compute could not be ended ({error}); end it by hand."
    lifecycle.fail_studio(studio.pk, f"{reason} Then start the studio again.", expected={StudioStatus.STARTING})


@shared_task
def reconcile_sessions():
    """Repair what the database believes from what the backends report, and forget ghost connections."""
    presence.forget_dead_processes_and_announce()
    for studio in lifecycle.overdue_starts().select_related("compute_environment"):
        _fail_overdue_start(studio)
    active = Studio.objects.filter(status__in=ACTIVE_STATUSES, session__isnull=False, session__ended=None)
    for studio in active.exclude(session__handle={}).select_related("compute_environment", "session"):
        session = studio.session
        try:
            backend = backend_for(studio.compute_environment)
            state = backend.poll(session.handle)
        except BackendError as error:
            log.warning("studio %s: cannot poll its session: %s", studio.pk, error)
            continue
        if state.alive:
            if studio.status == StudioStatus.STARTING and state.progress:
                lifecycle.provisioning_progress(studio.pk, state.progress)
            if state.endpoint and not session.endpoint:
                lifecycle.session_located(session.pk, state.endpoint, state.control)
            continue
        backend.terminate(session.handle, 0)  # whatever is left of it
        if studio.status == StudioStatus.STOPPING:
            lifecycle.session_stopped(studio.pk)
        else:
            lifecycle.fail_studio(studio.pk, state.reason, expected={studio.status})
    for studio in lifecycle.overdue_stops():
        stop_session.delay(studio.pk)


@shared_task
def check_compute_environments():
    for environment_id in ComputeEnvironment.objects.values_list("pk", flat=True):
        check_compute_environment.delay(environment_id)


@shared_task
def check_compute_environment(environment_id):
    environments.check_environment(environment_id)
