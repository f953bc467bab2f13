"""Celery tasks: they take ids, re-read rows, and are safe to run twice or after a crash."""

import logging
import time

import httpx
from celery import shared_task
from celery.signals import task_failure, worker_ready
from django.conf import settings
from django.utils import timezone

from checkpoints.models import Checkpoint

from . import lifecycle, metrics, notices, presence
from .backends import BackendError, Mount, SessionSpec, backend_for, local_backend
from .models import ACTIVE_STATUSES, ComputeEnvironment, Session, Studio, StudioStatus, Template
from .supervisor import protocol

log = logging.getLogger(__name__)

# How long a session that reported its own end gets to finish taking itself down before it is killed.
REAP_GRACE_SECONDS = 10
# A stop waits for its session in rounds this long, each a task of its own; it looks every STOP_POLL_SECONDS.
STOP_ROUND_SECONDS = 10
STOP_POLL_SECONDS = 1
# How often a start's compute is asked where it stands while it is provisioned (``follow_start``).
FOLLOW_SECONDS = 3


def session_spec(session):
    studio = session.studio
    source = session.restored_from
    return SessionSpec(
        name=f"studio-{studio.pk}",
        template=studio.template,
        base_path="/",  # each session has an origin of its own (``origins``)
        cpus=session.cpus,
        memory_mb=session.memory_mb,
        token=session.token,
        platform_url=settings.STUDIOS_PLATFORM_URL.rstrip("/"),
        work_dir=studio.compute_environment.work_dir,
        manifest_prefix=protocol.manifest_prefix(studio.pk),
        mounts=[
            Mount(name=mount.dataset.name, uri=mount.dataset.uri, writable=mount.writable)
            for mount in studio.active_mounts.select_related("dataset")
        ],
        storage_quota_mb=settings.STUDIOS_WRITABLE_LAYER_MB,
        # The supervisor looks whether the IDE works only for a studio with an idle stop.
        work_check_seconds=settings.STUDIOS_WORK_CHECK_SECONDS if studio.idle_stop_minutes else 0,
        restore={"name": source.name, "manifest_key": source.manifest_key, "manifest_sha256": source.manifest_sha256}
        if source
        else {},
        labels={"workspace": str(studio.workspace), "studio": studio.name, "user": studio.author.username},
        time_limit_minutes=session.time_limit_minutes,
    )


@shared_task
def launch_session(session_id):
    """Plan the session (its handle names all it will create, and is recorded before anything is), then launch it.
    Run again after a worker died mid-way, it adopts the compute the earlier attempt submitted without recording it
    (``recover``: a job still waiting or running), else removes whatever that attempt may have created."""
    session = (
        Session.objects.select_related(
            "studio__compute_environment", "studio__workspace__organization", "studio__author", "restored_from"
        )
        .filter(pk=session_id, ended=None, launched=False, studio__status=StudioStatus.STARTING)
        .first()
    )
    if session is None or session.studio.session_id != session.pk or not lifecycle.claim(session_id):
        return
    backend = backend_for(session.studio.compute_environment)
    spec = session_spec(session)
    handle = session.handle
    try:
        launched = backend.recover(handle) if handle else None
        if launched is None:
            if handle:
                backend.terminate(handle, 0)
            handle = backend.plan(spec)
            if not lifecycle.record_launch(session_id, handle):
                return
            launched = backend.launch(spec, handle)
    except (BackendError, OSError) as error:
        log.warning("studio %s: could not launch: %s", session.studio_id, error)
        end_compute(session.studio.compute_environment_id, handle)
        lifecycle.fail_studio(
            session.studio_id, f"Could not provision compute: {error}", expected={StudioStatus.STARTING}
        )
        return
    if not lifecycle.record_launch(session_id, launched, launched=True):
        log.info("studio %s: start superseded, ending the session just launched", session.studio_id)
        end_compute(session.studio.compute_environment_id, launched)


@shared_task
def stop_session(studio_id, forced_by="", claimed=None):
    """Ask the session to save a final checkpoint and end, then wait for it in rounds of at most STOP_ROUND_SECONDS
    (each round queues the next), so that a worker's death loses at most a round; once the session has ended, or
    the stop timeout has passed (then it is ended by force), remove what is left and mark the studio stopped,
    telling the user what may be lost. ``forced_by``: a member forced the stop; end it now."""
    studio = Studio.objects.select_related("compute_environment", "session").filter(pk=studio_id).first()
    if studio is None or studio.status != StudioStatus.STOPPING or studio.session is None:
        return
    session = studio.session
    backend = backend_for(studio.compute_environment)
    unsaved = f"Force stopped by {forced_by} before the session saved a final checkpoint" if forced_by else ""
    if not forced_by and session.launched:
        claimed = lifecycle.claim(session.pk, claimed)
        if claimed is None:
            return  # another task is stopping it
        ask_to_stop(studio, backend)
        deadline = studio.status_changed.timestamp() + settings.STUDIOS_STOP_TIMEOUT_SECONDS
        round_end = min(time.time() + STOP_ROUND_SECONDS, deadline)
        while (alive := backend.poll(session.handle).alive) and time.time() < round_end:
            time.sleep(STOP_POLL_SECONDS)
        if alive and time.time() < deadline:
            stop_session.delay(studio_id, claimed=claimed)
            return
        if alive:
            unsaved = "The session did not save its final checkpoint in time, so it was stopped anyway"
        else:
            session.refresh_from_db()
            checkpoint = session.checkpoint
            if checkpoint is None or checkpoint.state != Checkpoint.State.FINALIZED:
                unsaved = f"The session could not save a final checkpoint ({session.checkpoint_error or 'it did not say why'})"
    if end_compute(studio.compute_environment_id, session.handle):
        lifecycle.session_stopped(studio_id, unsaved=unsaved)


def ask_supervisor(session, action, notice=None, timeout=5.0):
    """POST ``action`` (with ``notice``, JSON) to the session supervisor's control endpoint, with the session's token;
    its answer. Raises ``httpx.HTTPError`` when the supervisor did not take it."""
    response = httpx.post(
        f"{session.control_endpoint}/{action}",
        json=notice,
        headers={"Authorization": f"Bearer {session.token}"},
        timeout=timeout,
    )
    response.raise_for_status()
    return response


def ask_to_stop(studio, backend):
    """Ask the supervisor to stop through its control endpoint, saying who stopped the studio or why (the session's
    pages save their documents and show it; the supervisor then saves a final checkpoint, takes the session down and
    exits); where it does not answer, have the backend ask (a signal, Batch's TerminateJob)."""
    session = studio.session
    try:
        ask_supervisor(session, "stop", notices.stop_notice(studio))
    except httpx.HTTPError as error:
        log.info("studio %s: the supervisor did not take the stop (%s); asking the backend", session.studio_id, error)
        backend.stop(session.handle)


@shared_task
def extend_session(session_id):
    """A session's lifespan was extended: compute with a time limit of its own (a Slurm job) gets the new one."""
    session = Session.objects.select_related("studio__compute_environment").filter(pk=session_id, ended=None).first()
    if session is None or not session.handle:
        return
    try:
        backend_for(session.studio.compute_environment).extend(session.handle, session.time_limit_minutes)
    except BackendError as error:
        log.warning("studio %s: could not extend its compute's time limit: %s", session.studio_id, error)


@shared_task
def reap_session(session_id, reason):
    """A session reported it cannot go on: end its compute, then make its studio errored."""
    session = Session.objects.select_related("studio__compute_environment").filter(pk=session_id, ended=None).first()
    if session is None:
        return
    if end_compute(session.studio.compute_environment_id, session.handle, REAP_GRACE_SECONDS):
        lifecycle.fail_studio(session.studio_id, reason, expected={StudioStatus.STARTING, StudioStatus.RUNNING})


def end_compute(environment_id, handle, timeout=0):
    """End a session's compute and check nothing of it is left; whether that is so (else the reconcile tries again)."""
    environment = ComputeEnvironment.objects.filter(pk=environment_id).first()
    if environment is None or not handle:
        return True
    try:
        backend_for(environment).terminate(handle, timeout)
    except BackendError as error:
        log.warning("could not end a session's compute: %s", error)
        return False
    return True


@shared_task(bind=True, max_retries=None)
def follow_start(self, session_id):
    """While a launched session's compute is being provisioned, ask its backend every FOLLOW_SECONDS where it
    stands: the studio's first step then shows a Batch job's state as it changes (waiting for an instance, pulling
    the image), not at the next reconcile, and the platform knows where the session is reached (a Batch job's host)
    as soon as the backend does. Ends once it knows, or the start has ended (the reconcile says why)."""
    session = (
        Session.objects.select_related("studio__compute_environment")
        .filter(pk=session_id, ended=None, endpoint="", studio__status=StudioStatus.STARTING)
        .exclude(handle={})
        .first()
    )
    if session is None:
        return
    try:
        state = backend_for(session.studio.compute_environment).poll(session.handle)
    except BackendError as error:
        log.warning("studio %s: cannot poll its session: %s", session.studio_id, error)
        raise self.retry(countdown=FOLLOW_SECONDS) from None
    if state.endpoint:
        lifecycle.session_located(session_id, state.endpoint, state.control)
    elif state.alive:
        if state.progress:
            lifecycle.provisioning_progress(session.studio_id, state.progress)
        raise self.retry(countdown=FOLLOW_SECONDS)


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
        response = ask_supervisor(session, "checkpoint", timeout=settings.STUDIOS_STOP_TIMEOUT_SECONDS)
        return bool(response.json().get("recorded"))
    except (httpx.HTTPError, ValueError) as error:
        log.warning("studio %s: checkpoint failed: %s", session.studio_id, error)
        return False


@shared_task
def checkpoint_session(session_id):
    """Ask a running session's supervisor for a checkpoint now; it reports the result itself."""
    request_checkpoint(running_sessions().filter(pk=session_id).first())


@shared_task
def stop_due_studios():
    """Warn the members of studios that will be stopped automatically soon (their lifespan runs out, or they are
    idle), on the pages of their workspace and in the session (``warn_session``), and stop those whose stop is due
    and was warned of. Every minute by Celery beat; what is due is read from the rows, so a tick missed while no beat
    ran is caught up by the next, and two workers never warn or stop twice (``lifecycle``). A stop whose warning was
    missed (no beat ran) is warned of now and made at the next tick, not at once."""
    warned = set()
    for studio_id, session_id, when in lifecycle.stops_to_warn():
        if lifecycle.claim_warning(session_id, when):
            warned.add(studio_id)
            studio = Studio.objects.select_related("session").get(pk=studio_id)
            presence.studio_changed(studio)
            warn_session.delay(session_id)
    for studio_id in set(lifecycle.due_stops()) - warned:
        lifecycle.stop_when_due(studio_id)


@shared_task
def warn_session(session_id):
    """Tell the pages open in a running session of its automatic stop ahead, as ``stop_due_studios`` warned the
    platform's pages of it."""
    session = running_sessions().select_related("studio__session").filter(pk=session_id).first()
    if session is None or session.studio.stop_warning is None:
        return  # extended, or kept running, meanwhile
    try:
        ask_supervisor(session, "notice", notices.warning_notice(session.studio))
    except httpx.HTTPError as error:
        log.warning("studio %s: could not warn the session's pages: %s", session.studio_id, error)


def _fail_overdue_start(studio):
    reason = f"The session did not become ready within {settings.STUDIOS_START_TIMEOUT_SECONDS // 60} minutes."
    handle = studio.session.handle if studio.session else {}
    try:
        reason += " " + backend_for(studio.compute_environment).start_timeout_hint(handle)
    except BackendError as error:
        reason += f" ({error})"
    if end_compute(studio.compute_environment_id, handle, settings.STUDIOS_STOP_TIMEOUT_SECONDS):
        lifecycle.fail_studio(studio.pk, f"{reason} Then start the studio again.", expected={StudioStatus.STARTING})


@shared_task
def reconcile_sessions():
    """Repair what the database believes from what the backends report: sessions whose compute ended, starts and
    stops no task works on, what is left on hosts that no session owns; and forget ghost connections."""
    presence.forget_dead_processes_and_announce()
    for studio in lifecycle.overdue_starts().select_related("compute_environment", "session"):
        _fail_overdue_start(studio)
    active = Studio.objects.filter(status__in=ACTIVE_STATUSES, session__isnull=False, session__ended=None)
    for studio in active.exclude(session__handle={}).select_related("compute_environment", "session"):
        session = studio.session
        assert session is not None  # the query asks for one
        try:
            backend = backend_for(studio.compute_environment)
            # A job submitted by a worker that died before recording it (its supervisor may have reported since).
            recovered = backend.recover(session.handle) if studio.status == StudioStatus.STARTING else None
            if recovered is not None and lifecycle.record_launch(
                session.pk, recovered, launched=True, planned=session.handle
            ):
                session.handle = recovered
            state = backend.poll(session.handle)
        except BackendError as error:
            log.warning("studio %s: cannot poll its session: %s", studio.pk, error)
            continue
        if state.alive:
            if studio.status == StudioStatus.STARTING and state.progress:
                lifecycle.provisioning_progress(studio.pk, state.progress)
            if state.endpoint and not session.endpoint:
                lifecycle.session_located(session.pk, state.endpoint, state.control)
        elif session.launched and end_compute(studio.compute_environment_id, session.handle):
            if studio.status == StudioStatus.STOPPING:
                lifecycle.session_stopped(studio.pk)
            else:
                lifecycle.fail_studio(studio.pk, state.reason, expected={studio.status})
    for session_id in lifecycle.unattended_starts():
        launch_session.delay(session_id)
    for studio_id in lifecycle.unattended_stops():
        stop_session.delay(studio_id)
    sweep_hosts()


@task_failure.connect
def count_task_failure(sender=None, **kwargs):
    metrics.TASK_FAILURES.labels(sender.name if sender else "unknown").inc()


@worker_ready.connect
def reconcile_when_a_worker_starts(**kwargs):
    """A worker that comes back after a crash repairs at once what the crash left, rather than at the next tick."""
    reconcile_sessions.delay()


def sweep_hosts():
    """Remove from this platform's hosts, and from the queues of its Slurm clusters, whatever no live session owns
    (a job submitted by a start that was retried meanwhile). What is there is listed before the sessions are read: a
    session is recorded before anything of it is created, so none can be missed in between."""
    clusters = [backend_for(environment) for environment in ComputeEnvironment.objects.filter(kind="slurm")]
    found = []
    for backend in [local_backend(), *clusters]:
        try:
            found.append((backend, backend.inventory()))
        except BackendError as error:
            log.warning("cannot list what sessions left: %s", error)
    owned = list(Session.objects.filter(ended=None).values_list("handle", flat=True))
    for backend, leftovers in found:
        for removed in backend.sweep(leftovers, owned):
            log.warning("removed what no session owns: %s", removed)


@shared_task
def check_compute_environments():
    for environment_id in ComputeEnvironment.objects.values_list("pk", flat=True):
        check_compute_environment.delay(environment_id)


@shared_task
def check_compute_environment(environment_id):
    """Ask the backend whether sessions can start on the compute environment, which templates it runs and whether
    it isolates them, and record the answers: the pages and forms read them from the row."""
    environment = ComputeEnvironment.objects.get(pk=environment_id)
    try:
        backend = backend_for(environment)
        problem = backend.environment_problem()
        template_problems = {template: backend.template_problem(template) for template in Template.values}
        isolation_problem = backend.isolation_problem
    except BackendError as error:
        problem, isolation_problem = str(error), ""
        template_problems = dict.fromkeys(Template.values, str(error))
    status = ComputeEnvironment.Status.INVALID if problem else ComputeEnvironment.Status.AVAILABLE
    if (status, problem) != (environment.status, environment.status_reason):
        log.log(
            logging.WARNING if problem else logging.INFO,
            "compute environment %s (%s) is now %s%s",
            environment.pk,
            environment.name,
            status,
            f": {problem}" if problem else "",
        )
    ComputeEnvironment.objects.filter(pk=environment_id).update(
        status=status,
        status_reason=problem,
        status_checked=timezone.now(),
        template_problems=template_problems,
        isolation_problem=isolation_problem,
    )
