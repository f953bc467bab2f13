"""A worker killed after ``sbatch`` returned and before it recorded the job's id (issue 18): the job it submitted is
found again by its name, and adopted by the retried start or by the reconcile; never left running beside another.
And a job no session owns any more is cancelled by the sweep."""

from pathlib import Path
from unittest import mock

import pytest

from studios import lifecycle, tasks
from studios.models import Session, Studio, StudioStatus
from studios.supervisor import sandbox

from ..live import (
    killed_launch,
    left_unclaimed,
    live_platform_environment,
    reconciled_until_running,
    run,
    wait_for_status,
    wait_until,
)
from .conftest import job_of, on_cluster, slurm

pytestmark = pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem())


def jobs_of(studio):
    """The ids of the studio's jobs that Slurm runs or will run (named ``studio-<id>``, or after one start of it)."""
    name = f"studio-{studio.pk}"
    listing = (line.partition("|") for line in slurm("squeue", "--noheader", "--me", "--format=%i|%j").split())
    return [job for job, _, job_name in listing if job_name == name or job_name.startswith(f"{name}-")]


def killed_after_sbatch(live_platform, user, studio):
    """Start the studio, its start task run by a worker killed by SIGKILL once ``sbatch`` has returned; the job."""
    with mock.patch.object(lifecycle, "dispatch"):  # the start's task message: the killed worker's
        lifecycle.start_studio(user, studio)
    studio.refresh_from_db()
    killed_launch(studio.session.pk, "before-recorded", live_platform_environment(live_platform))
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING and "job_id" not in studio.session.handle
    [job] = jobs_of(studio)
    return job


def test_a_job_waiting_when_its_start_is_retried_is_adopted_not_submitted_again(live_platform, studio_on_cluster):
    workspace, environment, user = studio_on_cluster
    studio = on_cluster(workspace, environment, user, "hpc")
    slurm("scontrol", "update", "PartitionName=studios", "State=DOWN")  # the job waits: no report comes from it
    job = killed_after_sbatch(live_platform, user, studio)
    left_unclaimed(studio.session)
    tasks.launch_session(studio.session.pk)  # the reconcile's retry of the unattended start
    studio.refresh_from_db()
    assert studio.session.handle["job_id"] == job and jobs_of(studio) == [job]

    slurm("scontrol", "update", "PartitionName=studios", "State=UP")
    reconciled_until_running(studio)
    assert jobs_of(studio) == [job]
    assert run(live_platform, studio, user, "print(6 * 7)") == "42"
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED)
    wait_until(lambda: not jobs_of(studio), 30, f"job {job} to leave the queue")


def test_a_job_whose_supervisor_reported_before_it_was_recorded_is_found_by_the_reconcile(
    live_platform, studio_on_cluster
):
    workspace, environment, user = studio_on_cluster
    studio = on_cluster(workspace, environment, user, "hpc")
    job = killed_after_sbatch(live_platform, user, studio)
    # The job runs and its supervisor reports: the session is launched, and no start is retried.
    wait_until(lambda: Session.objects.get(pk=studio.session.pk).launched, 60, "the job's supervisor to report")
    reconciled_until_running(studio)
    assert studio.session.handle["job_id"] == job and jobs_of(studio) == [job]
    assert run(live_platform, studio, user, "print(6 * 7)") == "42"
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED)
    wait_until(lambda: not jobs_of(studio), 30, f"job {job} to leave the queue")


def test_a_job_no_session_owns_is_cancelled_by_the_sweep(live_platform, studio_on_cluster):
    workspace, environment, user = studio_on_cluster
    studio = on_cluster(workspace, environment, user, "hpc")
    slurm("scontrol", "update", "PartitionName=studios", "State=DOWN")  # its job waits
    lifecycle.start_studio(user, studio)
    wait_until(lambda: job_of(studio), 30, "the start task to submit the job")
    spool = Path(studio.session.handle["spool"])
    # An operator deletes the studio's row (in the admin, or by restoring an older database) while its job waits.
    Studio.objects.filter(pk=studio.pk).delete()
    tasks.reconcile_sessions()
    assert jobs_of(studio) == [] and not spool.exists()
