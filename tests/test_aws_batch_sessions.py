"""A studio on AWS Batch end to end, against moto's server on this host's network address.

The platform (served for real, with a real Celery worker) submits the job to moto. The test then
plays the Batch host the job lands on: a session's host (``supervisor/host.py``, as the local backend uses it) runs
the job's image, as its job definition names it, with exactly the command and environment the job carries, read back
from moto's describe_jobs, in a privileged job container made from that image, given the instance role's
credentials; and places the job on an instance whose private address is this host's. The platform finds the session
there (beat's reconcile, played by the test), never where a report says; the supervisor runs the IDE in its sandbox,
reaches the platform and the S3 work directory, and a stop must end with its checkpoint in S3.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import boto3
import httpx
import pytest
from django.conf import settings

from checkpoints.models import Checkpoint
from studios import lifecycle
from studios.models import ComputeEnvironment, Role, Session, StudioStatus
from studios.supervisor import sandbox
from studios.supervisor.protocol import TICKET, TICKETS_PATH, SessionConfig
from studios.tasks import launch_session, reconcile_sessions

from .conftest import host_address
from .factories import make_dataset, make_member, make_studio, make_workspace
from .images import PROJECT_ROOT
from .live import (
    Browser,
    debian_package,
    execute,
    killed_launch,
    left_unclaimed,
    live_platform_environment,
    make_wheel,
    reconciled_until_running,
    wait_for_status,
    wait_until,
)
from .moto_batch import REGION, MotoBatch, environment_of

# The job's supervisor sandboxes the IDE, as it does in the job's privileged container on Batch.
pytestmark = pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem())

# What the instance gives the job's container besides the job's own environment: its role's credentials.
INSTANCE = {"AWS_ACCESS_KEY_ID": "instance-role", "AWS_SECRET_ACCESS_KEY": "instance-role"}


class BatchHost:
    """The EC2 instance a job lands on: it starts the job's container command in a mount namespace of its own
    and, when Batch terminates the job, sends it SIGTERM and reports the job ended once it has exited."""

    def __init__(self, batch, log_dir):
        self.batch = batch
        self.log_dir = log_dir
        self.jobs = []  # (process, session configuration)

    def run(self, job_id, template):
        job = self.batch.describe(job_id)
        environment = environment_of(job)
        bundle = self.log_dir / job_id
        bundle.mkdir()
        host = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(PROJECT_ROOT),
            **INSTANCE,
            "STUDIOS_HOST_JOB": json.dumps({"command": job["container"]["command"], "environment": environment}),
            "STUDIOS_HOST_IMAGE": self.batch.client.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])[
                "jobDefinitions"
            ][0]["containerProperties"]["image"],
            "STUDIOS_HOST_IMAGE_CACHE": str(settings.STUDIOS_IMAGE_CACHE_DIR),
        }
        self.batch.place(job_id)
        self.batch.set_state(job_id, "STARTING")
        with open(self.log_dir / f"{job_id}.log", "ab") as log:
            process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    "-m",
                    "studios.supervisor.host",
                ],
                env=host,
                cwd=bundle,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.jobs.append((process, SessionConfig.from_environ(environment), bundle))
        self.batch.set_state(job_id, "RUNNING")
        self.batch.on_terminate[job_id] = lambda moto_job: self._stop(process, moto_job)
        return environment

    def _stop(self, process, moto_job):
        process.send_signal(signal.SIGTERM)

        def report_when_exited():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # what ECS does once its stop timeout has passed
                process.wait()
            moto_job._mark_stopped(success=False)

        threading.Thread(target=report_when_exited, daemon=True).start()

    def close(self):
        """What the end of a job's container takes with it: its processes, the sandbox, the session folder."""
        for process, config, bundle in self.jobs:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            sandbox.delete(config.container_id)
            sandbox.unmount_all_under(bundle)
            shutil.rmtree(bundle, ignore_errors=True)


@pytest.fixture
def batch_host(live_platform, moto_server, monkeypatch, tmp_path):
    httpx.post(f"{moto_server}/moto-api/reset")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "platform-role")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-role")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    batch = MotoBatch(monkeypatch)
    batch.make_queue()
    boto3.client("s3").create_bucket(Bucket="lab-work", CreateBucketConfiguration={"LocationConstraint": REGION})
    host = BatchHost(batch, tmp_path)
    yield host
    host.close()
    httpx.post(f"{moto_server}/moto-api/reset")  # the server is shared by the session's other tests


def wait_for_job(studio, previous=None, timeout=60):
    """The job the start task submitted for ``studio`` (another than ``previous``)."""

    def submitted():
        studio.refresh_from_db()
        if studio.status == StudioStatus.ERRORED:
            pytest.fail(f"studio errored: {studio.status_reason}")
        return studio.session.handle.get("job_id") not in (None, previous) and studio.session.handle["job_id"]

    return wait_until(submitted, timeout, "the start task to submit a job", interval=0.2)


def first_step(studio):
    studio.refresh_from_db()
    return studio.session.steps[0]


def running_on_batch_host(batch_host, studio, previous=None):
    """Run the studio's job on the Batch host; the platform finds it there and the studio runs."""
    job = wait_for_job(studio, previous)
    session = batch_host.run(job, studio.template)
    reconcile_sessions()  # beat's: Batch says the job RUNNING on its instance
    return job, session, wait_for_status(studio, StudioStatus.RUNNING)


def shown_by_batch(batch, job_id):
    """Everything Batch shows of a job to whoever may read it: DescribeJobs, ListJobs, DescribeJobDefinitions."""
    job = batch.describe(job_id)
    return [
        job,
        batch.client.list_jobs(jobQueue="studios", jobStatus=job["status"]),
        batch.client.describe_job_definitions(jobDefinitions=[job["jobDefinition"]]),
    ]


def batch_workspace():
    workspace = make_workspace()
    environment = ComputeEnvironment.objects.create(
        workspace=workspace,
        name="batch",
        kind="aws-batch",
        region=REGION,
        job_queue="studios",
        work_dir="s3://lab-work/studios",
    )
    return workspace, environment


def in_session(live_platform, user, studio, code):
    return asyncio.run(execute(live_platform, Browser(live_platform, user), studio, code)).strip()


def test_a_batch_session_runs_sandboxed_where_batch_runs_its_job_guards_its_ports_and_checkpoints_to_s3(
    live_platform, batch_host
):
    workspace, environment = batch_workspace()
    user = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(
        workspace, name="cloud", author=user, compute_environment_id=environment.pk, cpus=1, memory_mb=1024
    )

    lifecycle.start_studio(user, studio)
    # Batch's state reaches the studio's page as it changes, not at beat's next reconcile (not run here).
    batch_host.batch.set_state(wait_for_job(studio), "RUNNABLE")
    wait_until(
        lambda: "RUNNABLE: waiting for an instance" in first_step(studio)["message"], 10, "the job's state to be shown"
    )
    job, session, studio = running_on_batch_host(batch_host, studio)
    reconcile_sessions()  # Batch says RUNNING: nothing to repair
    studio.refresh_from_db()
    assert studio.status == StudioStatus.RUNNING

    # The supervisor got its token for the job's start ticket: no token in anything Batch shows of the job, and the
    # ticket, read from there and presented again, is refused.
    token = studio.session.token
    assert token not in json.dumps(shown_by_batch(batch_host.batch, job), default=str)
    replayed = httpx.post(f"{live_platform.url}{TICKETS_PATH}", headers={"Authorization": f"Bearer {session[TICKET]}"})
    assert replayed.status_code == 403

    # The platform reaches the session at its instance's private address, on the ports it chose; the gate
    # and the control endpoint answer there, and only to requests that carry the session token.
    host = host_address()
    assert studio.session.endpoint == f"http://{host}:{session['STUDIOS_PORT']}"
    assert studio.session.control_endpoint == f"http://{host}:{session['STUDIOS_CONTROL_PORT']}"
    ide = f"{studio.session.endpoint}/"
    for path in ("api/contents", "api/kernels", "api/terminals", "api/status", "lab"):
        assert httpx.get(ide + path).status_code == 403, path
    assert httpx.post(ide + "api/kernels", json={"name": "python3"}).status_code == 403
    assert httpx.get(ide + "api/contents", headers={"X-Studios-Session-Token": "guessed"}).status_code == 403
    control = f"{studio.session.control_endpoint}/checkpoint"
    assert httpx.post(control).status_code == 403
    assert httpx.post(control, headers={"Authorization": "Bearer guessed"}).status_code == 403
    assert httpx.get(ide + "api/contents", headers={"X-Studios-Session-Token": token}).status_code == 200
    # Members reach it through the platform's proxy, which adds the token.
    assert Browser(live_platform, user).session(studio).http.get("/api/contents").status_code == 200

    # Code in the session runs in the sandbox: its own PID namespace, nothing of the supervisor's in sight.
    seen = in_session(
        live_platform,
        user,
        studio,
        "import os\nopen('/workspace/model.txt', 'w').write('trained\\n')\n"
        "print(os.getpid() < 100, [n for n in os.environ if n.startswith(('STUDIOS_', 'AWS_'))], "
        f"os.listdir({session['STUDIOS_SESSION_DIR']!r}))",
    )
    assert seen == "True [] []"

    lifecycle.stop_studio(user, studio)
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert studio.status_reason == ""
    described = batch_host.batch.describe(job)
    assert (described["status"], described["statusReason"]) == ("FAILED", "Stopped from Studios")
    checkpoint = Checkpoint.objects.get(studio=studio, name="cloud_1")
    assert checkpoint.state == Checkpoint.State.FINALIZED
    assert checkpoint.manifest_key.startswith(f"manifests/studio-{studio.pk}/")
    keys = [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket="lab-work")["Contents"]]
    assert f"studios/.studios/checkpoints/{checkpoint.manifest_key}" in keys

    lifecycle.start_studio(user, studio)
    _second, session, studio = running_on_batch_host(batch_host, studio, previous=job)
    assert SessionConfig.from_environ(session).restore["manifest_key"] == checkpoint.manifest_key
    assert in_session(live_platform, user, studio, "print(open('/workspace/model.txt').read())") == "trained"
    assert "Restoring checkpoint" in [step["name"] for step in studio.session.steps]
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


@pytest.mark.skipif(shutil.which("code-server") is None, reason="code-server is not installed")
def test_a_vscode_batch_session_answers_only_with_the_token(live_platform, batch_host):
    """As the VS Code image runs it: the supervisor's gate on all interfaces in front of code-server."""
    workspace, environment = batch_workspace()
    user = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(
        workspace,
        name="editor",
        author=user,
        template="vscode",
        compute_environment_id=environment.pk,
        cpus=1,
        memory_mb=2048,
    )
    lifecycle.start_studio(user, studio)
    _, _, studio = running_on_batch_host(batch_host, studio)
    gate = f"{studio.session.endpoint}/"
    assert httpx.get(gate + "healthz").status_code == 403
    assert httpx.get(gate, headers={"X-Studios-Session-Token": "guessed"}).status_code == 403
    assert httpx.get(gate + "healthz", headers={"X-Studios-Session-Token": studio.session.token}).status_code == 200
    opened = Browser(live_platform, user).session(studio).http.get("/")
    assert opened.status_code == 302 and opened.headers["location"] == "./?folder=/workspace"

    lifecycle.stop_studio(user, studio)
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert Checkpoint.objects.get(studio=studio, name="editor_1").state == Checkpoint.State.FINALIZED


def jobs_of(batch, studio):
    """The ids of the studio's jobs on the queue that have not ended (named ``studio-<id>``, or after one start)."""
    name = f"studio-{studio.pk}"
    listed = batch.client.list_jobs(jobQueue="studios", filters=[{"name": "JOB_NAME", "values": [f"{name}*"]}])
    return [
        job["jobId"]
        for job in listed["jobSummaryList"]
        if (job["jobName"] == name or job["jobName"].startswith(f"{name}-"))
        and job["status"] not in ("SUCCEEDED", "FAILED")
    ]


@pytest.mark.parametrize("repair", ["retried start", "reconcile"])
def test_a_job_submitted_by_a_worker_killed_before_recording_it_is_adopted_never_submitted_twice(
    live_platform, batch_host, repair
):
    workspace, environment = batch_workspace()
    user = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(
        workspace, name="cloud", author=user, compute_environment_id=environment.pk, cpus=1, memory_mb=1024
    )
    with mock.patch.object(lifecycle, "dispatch"):  # the start's task message: taken by the worker killed below
        lifecycle.start_studio(user, studio)
    studio.refresh_from_db()
    killed_launch(studio.session.pk, "before-recorded", live_platform_environment(live_platform))
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING and "job_id" not in studio.session.handle
    [job] = jobs_of(batch_host.batch, studio)

    if repair == "retried start":  # the job waits for an instance: no report comes from it, and the start is retried
        left_unclaimed(studio.session)
        launch_session(studio.session.pk)
        studio.refresh_from_db()
        assert studio.session.handle["job_id"] == job
        batch_host.run(job, studio.template)
    else:  # Batch runs the job, whose supervisor reports: the session is launched, and no start is retried
        batch_host.run(job, studio.template)
        wait_until(lambda: Session.objects.get(pk=studio.session.pk).launched, 60, "the job's supervisor to report")
    reconciled_until_running(studio)
    assert studio.session.handle["job_id"] == job and jobs_of(batch_host.batch, studio) == [job]
    assert in_session(live_platform, user, studio, "print(6 * 7)") == "42"

    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert jobs_of(batch_host.batch, studio) == []


def test_a_batch_studio_mounts_its_s3_datasets_and_keeps_system_and_python_installs_across_restarts(
    live_platform, batch_host, tmp_path
):
    """The whole root is the session's to change, and its checkpoint in S3 brings the changes back: a Debian
    package and a Python wheel installed (both from a read-only S3 dataset, there being no network to fetch them
    from) are there after a stop and a start on another job. A dataset under the environment's writable paths takes
    writes, which land in S3; any other is read-only."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lab-data", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="lab-data", Key="cohort/sample.fastq", Body=b"@r1\nACGT\n")
    for made in (make_wheel(tmp_path), debian_package(tmp_path)):
        s3.upload_file(str(made), "lab-data", f"cohort/packages/{Path(made).name}")
    workspace, environment = batch_workspace()
    environment.writable_data_paths = ["s3://lab-work/results/"]
    environment.save()
    user = make_member(workspace, Role.MAINTAIN)
    cohort = make_dataset(workspace, "cohort", "s3://lab-data/cohort/")
    results = make_dataset(workspace, "results", "s3://lab-work/results/rnaseq/")
    studio = make_studio(
        workspace,
        name="cloud",
        author=user,
        compute_environment_id=environment.pk,
        cpus=1,
        memory_mb=1024,
        datasets=[cohort, results],
    )

    lifecycle.start_studio(user, studio)
    job, _, studio = running_on_batch_host(batch_host, studio)
    mounted = next(step for step in studio.session.steps if step["name"] == "Mounting data")
    assert mounted["state"] == "succeeded" and set(mounted["message"].split(", ")) == {"cohort", "results"}
    printed = in_session(
        live_platform,
        user,
        studio,
        "import errno, subprocess, sys\n"
        "try:\n    open('/workspace/data/cohort/new.txt', 'w').write('x')\n    read_only = 'writable'\n"
        "except OSError as e:\n    read_only = errno.errorcode[e.errno]\n"
        "with open('/workspace/data/results/counts.tsv', 'w') as f:\n    f.write('gene\\t42\\n')\n"
        "pip = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', "
        "'/workspace/data/cohort/packages/greeting-1.0-py3-none-any.whl'], capture_output=True)\n"
        "dpkg = subprocess.run(['dpkg', '-i', '/workspace/data/cohort/packages/studios-probe.deb'], capture_output=True)\n"
        "print(read_only, open('/workspace/data/cohort/sample.fastq').read().split()[1], pip.returncode, "
        "dpkg.returncode, sep='|')",
    )
    assert printed == "EROFS|ACGT|0|0"

    def in_s3(bucket, key):
        return s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0

    wait_until(lambda: in_s3("lab-work", "results/rnaseq/counts.tsv"), 30, "the result to reach S3")
    assert s3.get_object(Bucket="lab-work", Key="results/rnaseq/counts.tsv")["Body"].read() == b"gene\t42\n"
    assert not in_s3("lab-data", "cohort/new.txt")

    lifecycle.stop_studio(user, studio)
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    checkpoint = Checkpoint.objects.get(studio=studio, name="cloud_1")
    assert checkpoint.state == Checkpoint.State.FINALIZED
    assert in_s3("lab-work", f"studios/.studios/checkpoints/{checkpoint.manifest_key}")

    lifecycle.start_studio(user, studio)
    _, session, studio = running_on_batch_host(batch_host, studio, previous=job)
    assert SessionConfig.from_environ(session).restore["manifest_key"] == checkpoint.manifest_key
    restored = in_session(
        live_platform,
        user,
        studio,
        "import subprocess, greeting\n"
        "dpkg = subprocess.run(['dpkg', '-s', 'studios-probe'], capture_output=True, text=True)\n"
        "print(greeting.hello(), dpkg.returncode, open('/usr/share/studios-probe/README').read().strip(), sep='|')",
    )
    assert restored == "hello from a checkpoint|0|installed in a session"
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_a_batch_session_on_a_host_without_room_for_its_layer_ends_with_a_reason_to_act_on(
    live_platform, batch_host, settings
):
    settings.STUDIOS_WRITABLE_LAYER_MB = 2**30  # a petabyte: more than this host's disk
    workspace, environment = batch_workspace()
    user = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, author=user, compute_environment_id=environment.pk, cpus=1, memory_mb=1024)
    lifecycle.start_studio(user, studio)
    batch_host.run(wait_for_job(studio), studio.template)
    studio = wait_for_status(studio, StudioStatus.ERRORED, timeout=90)
    assert studio.status_reason.startswith("The disk of the host the session was placed on has ")
    assert "less than the session's writable layer (1073741824 MB). Ask the workspace's admins" in studio.status_reason


def test_a_batch_session_whose_s3_dataset_cannot_be_read_ends_saying_why(live_platform, batch_host):
    """rclone would mount the missing bucket all the same, and the session would show the dataset empty."""
    workspace, environment = batch_workspace()
    user = make_member(workspace, Role.MAINTAIN)
    cohort = make_dataset(workspace, "cohort", "s3://no-such-bucket/cohort/")
    studio = make_studio(
        workspace, author=user, compute_environment_id=environment.pk, cpus=1, memory_mb=1024, datasets=[cohort]
    )
    lifecycle.start_studio(user, studio)
    batch_host.run(wait_for_job(studio), studio.template)
    studio = wait_for_status(studio, StudioStatus.ERRORED, timeout=90)
    assert studio.status_reason == (
        "Dataset cohort could not be mounted: its bucket no-such-bucket does not exist; check the dataset's URI."
    )
    mounting = next(step for step in studio.session.steps if step["name"] == "Mounting data")
    assert mounting["state"] == "errored"
