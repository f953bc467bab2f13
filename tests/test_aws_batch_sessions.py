"""A studio on AWS Batch end to end, against moto's server on loopback.

The platform (served for real, with a real Celery worker) submits the job to moto. The test then
plays the Batch host the job lands on: it runs the job's command, the session agent, with exactly
the environment the job carries, read back from moto's describe_jobs, plus what the image and the
instance provide (the image's Python, the instance role's credentials). From there the agent must
reach the platform and the S3 work directory, and a stop must end with its checkpoint in S3.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import httpx
import pytest

from checkpoints.models import Checkpoint
from studios import lifecycle
from studios.agent.__main__ import reachable_address
from studios.models import ComputeEnvironment, Role, StudioStatus
from studios.tasks import reconcile_sessions

from .factories import make_member, make_studio, make_workspace
from .moto_batch import REGION, MotoBatch, environment_of
from .test_sessions import Browser, wait_for_status

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What the image and the instance give the job's container besides the job's own environment.
IMAGE_AND_INSTANCE = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "PYTHONPATH": str(PROJECT_ROOT),
    "LANG": "C.UTF-8",
    "AWS_ACCESS_KEY_ID": "instance-role",
    "AWS_SECRET_ACCESS_KEY": "instance-role",
}


class BatchHost:
    """The EC2 instance a job lands on: it starts the job's container command in a fresh layer and, when
    Batch terminates the job, sends it SIGTERM and reports the job ended once it has exited."""

    def __init__(self, batch, log_dir):
        self.batch = batch
        self.log_dir = log_dir
        self.processes = []

    def run(self, job_id):
        job = self.batch.describe(job_id)
        environment = {**IMAGE_AND_INSTANCE, **environment_of(job)}
        shutil.rmtree(environment["HOME"], ignore_errors=True)  # every container starts from the image
        Path(environment["HOME"]).mkdir(parents=True)
        command = job["container"]["command"]
        assert command[0] == "python"
        self.batch.set_state(job_id, "STARTING")
        with open(self.log_dir / f"{job_id}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, *command[1:]],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
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
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def batch_host(live_platform, moto_server, monkeypatch, settings, tmp_path):
    httpx.post(f"{moto_server}/moto-api/reset")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "platform-role")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-role")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    settings.STUDIOS_CONTAINER_HOME = str(tmp_path / "container" / "workspace")
    batch = MotoBatch(monkeypatch)
    batch.make_queue()
    boto3.client("s3").create_bucket(Bucket="lab-work", CreateBucketConfiguration={"LocationConstraint": REGION})
    host = BatchHost(batch, tmp_path)
    yield host
    host.close()
    httpx.post(f"{moto_server}/moto-api/reset")  # the server is shared by the session's other tests


def wait_for_job(studio, previous=None, timeout=60):
    """The job the start task submitted for ``studio`` (another than ``previous``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        studio.refresh_from_db()
        if studio.session_handle.get("job_id") not in (None, previous):
            return studio.session_handle["job_id"]
        if studio.status == StudioStatus.ERRORED:
            pytest.fail(f"studio errored: {studio.status_reason}")
        time.sleep(0.2)
    pytest.fail("no job was submitted")


def batch_workspace():
    workspace = make_workspace()
    environment = ComputeEnvironment.objects.create(
        workspace=workspace, name="batch", kind="aws-batch", region=REGION, job_queue="studios",
        work_dir="s3://lab-work/studios",
    )  # fmt: skip
    return workspace, environment


def public_address():
    address = reachable_address("0.0.0.0", "http://192.0.2.1/")
    assert not address.startswith("127."), "this test needs a non-loopback address to reach the session on"
    return address


def test_a_batch_session_runs_with_its_jobs_environment_guards_its_ports_and_checkpoints_to_s3(
    live_platform, batch_host
):
    workspace, environment = batch_workspace()
    user = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(
        workspace, name="cloud", author=user, compute_environment_id=environment.pk, cpus=1, memory_mb=1024
    )

    lifecycle.start_studio(user, studio)
    job = wait_for_job(studio)
    session = batch_host.run(job)
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    reconcile_sessions()  # Batch says RUNNING: nothing to repair
    studio.refresh_from_db()
    assert studio.status == StudioStatus.RUNNING

    # The agent listens on every interface, reports the address it reaches the platform from, and answers
    # only requests that carry the session token, on any address.
    assert urlsplit(studio.session_endpoint).hostname == "127.0.0.1"
    public = public_address()
    ide = f"http://{public}:{urlsplit(studio.session_endpoint).port}{studio.connect_path}"
    control = f"http://{public}:{urlsplit(studio.agent_endpoint).port}/checkpoint"
    for path in ("api/contents", "api/kernels", "api/terminals", "api/status", "lab"):
        assert httpx.get(ide + path).status_code in (302, 403), path
    assert httpx.post(ide + "api/kernels", json={"name": "python3"}).status_code == 403
    assert httpx.post(control).status_code == 403
    assert httpx.post(control, headers={"Authorization": "Bearer guessed"}).status_code == 403
    assert httpx.get(ide + "api/contents", headers={"X-Studios-Session-Token": studio.session_token}).status_code == 200
    # Members reach it through the platform's proxy, which adds the token.
    assert Browser(live_platform, user).http.get(f"{studio.connect_path}api/contents").status_code == 200

    (Path(session["HOME"]) / "model.txt").write_text("trained\n")
    lifecycle.stop_studio(user, studio)
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert studio.status_reason == ""
    described = batch_host.batch.describe(job)
    assert (described["status"], described["statusReason"]) == ("FAILED", "Stopped from Studios")
    checkpoint = Checkpoint.objects.get(studio=studio, name="cloud_1")
    assert checkpoint.state == Checkpoint.State.FINALIZED
    keys = [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket="lab-work")["Contents"]]
    assert f"studios/.studios/checkpoints/{checkpoint.manifest_key}" in keys

    lifecycle.start_studio(user, studio)
    second = wait_for_job(studio, previous=job)
    session = batch_host.run(second)
    assert environment_of(batch_host.batch.describe(second))["STUDIOS_RESTORE"] != "{}"
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    assert (Path(session["HOME"]) / "model.txt").read_text() == "trained\n"
    assert "Restoring checkpoint" in [step["name"] for step in studio.startup_steps]
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


@pytest.mark.skipif(shutil.which("code-server") is None, reason="code-server is not installed")
def test_a_vscode_batch_session_answers_only_with_the_token_on_every_address(live_platform, batch_host):
    """As the VS Code image runs it: the agent's gate on all interfaces in front of code-server's socket."""
    workspace, environment = batch_workspace()
    user = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(
        workspace, name="editor", author=user, template="vscode", compute_environment_id=environment.pk,
        cpus=1, memory_mb=2048,
    )  # fmt: skip
    lifecycle.start_studio(user, studio)
    session = batch_host.run(wait_for_job(studio))
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    gate = f"http://{public_address()}:{urlsplit(studio.session_endpoint).port}{studio.connect_path}"
    assert httpx.get(gate + "healthz").status_code == 403
    assert httpx.get(gate, headers={"X-Studios-Session-Token": "guessed"}).status_code == 403
    assert httpx.get(gate + "healthz", headers={"X-Studios-Session-Token": studio.session_token}).status_code == 200
    opened = Browser(live_platform, user).http.get(studio.connect_path)
    assert opened.status_code == 302 and opened.headers["location"] == f"./?folder={session['HOME']}"

    lifecycle.stop_studio(user, studio)
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert Checkpoint.objects.get(studio=studio, name="editor_1").state == Checkpoint.State.FINALIZED
