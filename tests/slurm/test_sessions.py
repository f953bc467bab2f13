"""Studios on the local Slurm cluster, end to end: real jobs on its two nodes, reached through the platform's proxy,
checkpointed to the shared work directory."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from checkpoints.models import Checkpoint
from studios import lifecycle
from studios.backends import backend_for
from studios.models import ComputeEnvironment, Role, StudioStatus
from studios.supervisor import sandbox
from studios.tasks import check_compute_environment, reconcile_sessions

from ..factories import make_member, make_workspace
from ..live import run, wait_for_status, wait_until
from .conftest import job_of, on_cluster, slurm

pytestmark = pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem())


def job_state(job_id):
    return slurm("squeue", "--noheader", f"--jobs={job_id}", "--format=%T|%N|%r").strip()


def time_limit_minutes(job_id):
    """The job's time limit, which Slurm prints as [days-]hours:minutes:seconds."""
    limit = slurm("squeue", "--noheader", f"--jobs={job_id}", "--format=%l").strip()
    days, _, clock = limit.rpartition("-")
    hours, minutes, _ = (int(part) for part in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + minutes


def as_another_user(*command):
    """``command`` as ``nobody``, a user of the cluster who is neither the job's owner nor an administrator: what
    it prints and what it says went wrong."""
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "env", f"SLURM_CONF={os.environ['SLURM_CONF']}", *command],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout + done.stderr


def assert_hidden_from_other_users(job, *secrets):
    record = as_another_user("scontrol", "--details", "show", "job", job)
    assert f"JobId={job}" in record
    script = as_another_user("scontrol", "write", "batch_script", job, "-")
    assert "job script retrieval failed" in script
    for secret in secrets:
        assert secret not in record + script


def test_a_studio_runs_as_a_slurm_job_keeps_its_files_across_restarts_and_its_token_out_of_the_job(
    live_platform, studio_on_cluster
):
    workspace, environment, user = studio_on_cluster
    studio = on_cluster(workspace, environment, user, "hpc")

    lifecycle.start_studio(user, studio)
    wait_for_status(studio, StudioStatus.RUNNING)
    job = job_of(studio)
    state, node, _ = job_state(job).split("|")
    assert state == "RUNNING" and node in ("node1", "node2")
    # The session is reached on its node's address, on the ports the platform drew.
    assert studio.session.endpoint == f"http://127.0.0.1:{studio.session.handle['port']}"

    # Nothing Slurm shows other users of the cluster holds the token: not the job's record, not its script, which
    # carried it to the node (Slurm shows a job's script to its owner and the cluster's administrators only).
    token = studio.session.token
    assert_hidden_from_other_users(job, token)
    # Nothing of it is in the work directory: only the session's log, in a folder only the platform's user may read.
    spool = Path(studio.session.handle["spool"])
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert [path.name for path in spool.iterdir()] == ["session.log"]

    # The job's time limit is the studio's lifespan (8 h by default) and the stop's time for a final checkpoint;
    # extending the studio raises it.
    grace = settings.STUDIOS_STOP_TIMEOUT_SECONDS // 60 + 1
    assert time_limit_minutes(job) == 8 * 60 + grace
    lifecycle.extend_studio(user, studio, 2)
    wait_until(lambda: time_limit_minutes(job) == 10 * 60 + grace, 30, "the job's time limit to follow the extension")

    assert run(live_platform, studio, user, "open('/workspace/results.txt', 'w').write('42\\n'); print('saved')") == (
        "saved"
    )
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED)
    assert Checkpoint.objects.filter(studio=studio, state=Checkpoint.State.FINALIZED).count() == 1
    wait_until(lambda: not job_state(job), 30, f"job {job} to leave the queue")

    lifecycle.start_studio(user, studio)
    wait_for_status(studio, StudioStatus.RUNNING)
    assert job_of(studio) != job
    assert run(live_platform, studio, user, "print(open('/workspace/results.txt').read().strip())") == "42"
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED)


def running_in(folder):
    """The processes of this host working in ``folder`` (a session's folder on its node), also once it is deleted."""
    found = []
    for process in Path("/proc").iterdir():
        try:
            if os.readlink(process / "cwd").startswith(folder):
                found.append(int(process.name))
        except (OSError, ValueError):
            continue
    return found


def test_a_job_the_platform_signals_saves_a_final_checkpoint_and_leaves_nothing_running_on_its_node(
    live_platform, studio_on_cluster
):
    """What the platform sends a running job when its session's control endpoint does not answer, and before it
    cancels one (a force stop): SIGTERM to the job's batch script, which must reach the session's host."""
    workspace, environment, user = studio_on_cluster
    studio = on_cluster(workspace, environment, user, "signalled")
    lifecycle.start_studio(user, studio)
    wait_for_status(studio, StudioStatus.RUNNING)
    job, handle = job_of(studio), studio.session.handle
    folder = f"/tmp/{handle['container']}"
    assert running_in(folder)

    backend_for(environment).stop(handle)
    wait_until(lambda: not job_state(job), 60, f"job {job} to leave the queue")
    # Once Slurm says the job has ended, nothing of its session runs on the node: not its host (killed by the
    # signal, the batch script had left it running, unsignalled and no longer the job's), not its sandbox.
    assert running_in(folder) == []
    assert not sandbox.exists(handle["container"])
    assert not os.path.exists(folder)
    # The host had the signal, as the supervisor in it: it saved a final checkpoint first.
    assert Checkpoint.objects.filter(studio=studio, state=Checkpoint.State.FINALIZED).count() == 1


def test_a_studio_that_does_not_fit_waits_with_slurms_reason_and_one_cancelled_outside_errors(
    live_platform, studio_on_cluster
):
    workspace, environment, user = studio_on_cluster
    first, second, third = (on_cluster(workspace, environment, user, name) for name in ("one", "two", "three"))
    for studio in (first, second):
        lifecycle.start_studio(user, studio)
    for studio in (first, second):
        wait_for_status(studio, StudioStatus.RUNNING)
    assert {job_state(job_of(studio)).split("|")[1] for studio in (first, second)} == {"node1", "node2"}

    # Both nodes are full: the third waits, and its Provisioning step says for what.
    lifecycle.start_studio(user, third)
    wait_until(lambda: job_of(third), 30, "the third studio's job to be submitted")

    def provisioning_message():
        reconcile_sessions()  # beat's, every 20 s
        third.refresh_from_db()
        return third.session.steps[0]["message"]

    # Until the scheduler has looked at it, Slurm gives no reason ("waiting to be scheduled").
    waits = "waiting for a node with 2 CPUs and 1024 MB free in partition studios"
    wait_until(lambda: waits in provisioning_message(), 30, "the third studio's step to say why it waits", interval=1)
    assert third.status == StudioStatus.STARTING

    # Stopping a waiting studio cancels its job.
    lifecycle.stop_studio(user, third)
    wait_for_status(third, StudioStatus.STOPPED)

    # A job cancelled outside the platform: the studio errors, saying so.
    slurm("scancel", job_of(first))
    wait_until(
        lambda: reconcile_sessions() or first.refresh_from_db() or first.status == StudioStatus.ERRORED,
        60,
        "the cancelled studio to be errored",
        interval=1,
    )
    assert "cancelled outside Studios" in first.status_reason
    lifecycle.stop_studio(user, second)
    wait_for_status(second, StudioStatus.STOPPED)


def test_a_studio_keeps_its_checkpoints_in_an_s3_work_directory_with_the_environments_key_pair(
    live_platform, cluster, moto_s3
):
    # The platform's host reaches moto's S3 as its own identity; the jobs only with the environment's key pair
    # (nothing of the platform's environment reaches a job: sbatch --export=NONE).
    s3 = moto_s3
    s3.create_bucket(Bucket="hpc-work")
    workspace = make_workspace()
    environment = ComputeEnvironment(workspace=workspace, name="cluster", kind="slurm", partition="studios")
    environment.work_dir, environment.max_cpus, environment.max_memory_mb = "s3://hpc-work/slurm", 2, 2048
    environment.set_credentials("AKIASLURMNODES00001", "slurm-nodes-secret")
    environment.save()
    check_compute_environment(environment.pk)
    environment.refresh_from_db()
    assert environment.status == "available", environment.status_reason
    user = make_member(workspace, Role.MAINTAIN)
    studio = on_cluster(workspace, environment, user, "hpc-s3")

    lifecycle.start_studio(user, studio)
    wait_for_status(studio, StudioStatus.RUNNING)
    assert_hidden_from_other_users(job_of(studio), studio.session.token, "slurm-nodes-secret")
    assert run(live_platform, studio, user, "open('/workspace/counts.tsv', 'w').write('7\\n'); print('ok')") == "ok"
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED)
    assert Checkpoint.objects.filter(studio=studio, state=Checkpoint.State.FINALIZED).count() == 1
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="hpc-work")["Contents"]]
    assert any(key.startswith("slurm/.studios/checkpoints/manifests/") for key in keys)

    lifecycle.start_studio(user, studio)
    wait_for_status(studio, StudioStatus.RUNNING)
    assert run(live_platform, studio, user, "print(open('/workspace/counts.tsv').read().strip())") == "7"
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED)
