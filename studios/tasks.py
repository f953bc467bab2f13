"""Celery tasks: they take ids, re-read rows, and are safe to run twice or after a crash."""

import logging

import httpx
from celery import shared_task
from django.conf import settings

from . import environments, lifecycle, presence
from .backends import BackendError, Mount, SessionFailed, SessionSpec, backend_for
from .models import ACTIVE_STATUSES, ComputeEnvironment, Studio, StudioStatus

log = logging.getLogger(__name__)


def session_spec(studio):
    return SessionSpec(
        name=f"studio-{studio.pk}",
        template=studio.template,
        base_path=studio.connect_path,
        cpus=studio.cpus,
        memory_mb=studio.memory_mb,
        token=studio.session_token,
        callback_url=settings.STUDIOS_PLATFORM_URL.rstrip("/") + "/api/sessions",
        work_dir=studio.compute_environment.work_dir,
        mounts=[
            Mount(name=mount.dataset.name, uri=mount.dataset.uri, writable=mount.writable)
            for mount in studio.active_mounts.select_related("dataset")
        ],
        storage_quota_mb=settings.STUDIOS_WRITABLE_LAYER_MB,
        restore={
            "name": source.name, "manifest_key": source.manifest_key, "manifest_sha256": source.manifest_sha256
        } if (source := studio.restored_from) else {},
        labels={"workspace": str(studio.workspace), "studio": studio.name, "user": studio.author.username},
    )  # fmt: skip


@shared_task
def launch_session(studio_id, token):
    studio = (
        Studio.objects.select_related("compute_environment", "workspace__organization", "author")
        .filter(pk=studio_id)
        .first()
    )
    if studio is None or studio.status != StudioStatus.STARTING or studio.session_token != token:
        return
    if studio.session_handle:
        return
    try:
        backend = backend_for(studio.compute_environment)
        handle = backend.launch(session_spec(studio))
    except SessionFailed as error:
        lifecycle.session_failed(token, str(error), checkpoint_invalid=error.checkpoint_invalid)
        return
    except (BackendError, OSError) as error:
        lifecycle.fail_studio(studio_id, f"Could not provision compute: {error}", expected={StudioStatus.STARTING})
        return
    if not lifecycle.record_launch(studio_id, token, handle):
        log.info("studio %s: start superseded, ending the session just launched", studio_id)
        backend.terminate(handle, settings.STUDIOS_STOP_TIMEOUT_SECONDS)


@shared_task
def stop_session(studio_id):
    """Have the session save a final checkpoint, then end its compute; when the session does not answer in
    time, end it anyway and tell the user what may be lost."""
    studio = Studio.objects.select_related("compute_environment").filter(pk=studio_id).first()
    if studio is None or studio.status != StudioStatus.STOPPING:
        return
    saved = request_checkpoint(studio)
    if studio.session_handle:
        timeout = settings.STUDIOS_STOP_TIMEOUT_SECONDS if saved else 0
        backend_for(studio.compute_environment).terminate(studio.session_handle, timeout)
    unsaved = "" if saved else "The session did not save a final checkpoint when asked, so it was stopped anyway"
    lifecycle.session_stopped(studio_id, unsaved=unsaved)


@shared_task
def end_compute(environment_id, handle):
    """End a session's compute without waiting for it (a force stop)."""
    environment = ComputeEnvironment.objects.filter(pk=environment_id).first()
    if environment is not None:
        backend_for(environment).terminate(handle, 0)


@shared_task
def checkpoint_running_sessions():
    for studio_id in Studio.objects.filter(status=StudioStatus.RUNNING).exclude(agent_endpoint="").values_list("pk", flat=True):
        checkpoint_session.delay(studio_id)


def request_checkpoint(studio):
    """Ask a session's agent for a checkpoint now and wait for it; whether it was saved and recorded."""
    if not studio.agent_endpoint:
        return False
    try:
        response = httpx.post(
            f"{studio.agent_endpoint}/checkpoint",
            headers={"Authorization": f"Bearer {studio.session_token}"},
            timeout=settings.STUDIOS_STOP_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        return bool(response.json().get("recorded"))
    except (httpx.HTTPError, ValueError) as error:
        log.warning("studio %s: checkpoint failed: %s", studio.pk, error)
        return False


@shared_task
def checkpoint_session(studio_id):
    """Ask a running session's agent for a checkpoint now; it reports the result itself."""
    studio = Studio.objects.filter(pk=studio_id, status=StudioStatus.RUNNING).exclude(agent_endpoint="").first()
    if studio is not None:
        request_checkpoint(studio)


def _fail_overdue_start(studio):
    reason = f"The session did not become ready within {settings.STUDIOS_START_TIMEOUT_SECONDS // 60} minutes."
    try:
        backend = backend_for(studio.compute_environment)
        reason += " " + backend.start_timeout_hint(studio.session_handle)
        if studio.session_handle:
            backend.terminate(studio.session_handle, settings.STUDIOS_STOP_TIMEOUT_SECONDS)
    except BackendError as error:
        reason += f" Its compute could not be ended ({error}); end it by hand."
    lifecycle.fail_studio(studio.pk, f"{reason} Then start the studio again.", expected={StudioStatus.STARTING})


@shared_task
def reconcile_sessions():
    """Repair what the database believes from what the backends report, and forget ghost connections."""
    presence.forget_dead_processes_and_announce()
    for studio in lifecycle.overdue_starts().select_related("compute_environment"):
        _fail_overdue_start(studio)
    for studio in Studio.objects.filter(status__in=ACTIVE_STATUSES).exclude(session_handle={}):
        try:
            backend = backend_for(studio.compute_environment)
            state = backend.poll(studio.session_handle)
        except BackendError as error:
            log.warning("studio %s: cannot poll its session: %s", studio.pk, error)
            continue
        if state.alive:
            if studio.status == StudioStatus.STARTING and state.progress:
                lifecycle.provisioning_progress(studio.pk, state.progress)
            continue
        backend.terminate(studio.session_handle, 0)  # whatever is left of it
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
