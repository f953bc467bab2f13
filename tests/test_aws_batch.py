"""AWS Batch compute environments against moto in-process: the admin's pages and their checks,
the jobs a start submits, how Batch's states and reasons reach the studio, stop and force stop,
and the credentials that never come back out."""

import json
import logging
import threading
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from moto import mock_aws

from studios import lifecycle, tasks
from studios.backends import backend_for
from studios.backends.aws_batch import AGENT_COMMAND
from studios.models import ComputeEnvironment, Role, Studio, StudioStatus

from .factories import make_dataset, make_studio
from .moto_batch import REGION, MotoBatch, environment_of

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "platform-role")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-role")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    batch = MotoBatch(monkeypatch)
    with mock_aws():
        yield batch


@pytest.fixture
def eager_tasks(monkeypatch):
    """Celery tasks dispatched by the code under test run at once, in the test."""
    from studios_project.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)


@pytest.fixture
def environment(workspace, aws):
    aws.make_queue()
    return ComputeEnvironment.objects.create(
        workspace=workspace, name="batch", kind="aws-batch", region=REGION, job_queue="studios",
        work_dir="s3://lab-work/studios", writable_data_paths=["s3://lab-results/"], max_cpus=16,
    )  # fmt: skip


@pytest.fixture
def maintainer(members):
    return members[Role.MAINTAIN]


@pytest.fixture
def studio(workspace, environment, maintainer):
    return make_studio(
        workspace, name="rnaseq", author=maintainer, compute_environment_id=environment.pk, cpus=4, memory_mb=4096
    )


def launch(user, studio):
    """Start the studio and run the start task: its job is submitted."""
    lifecycle.start_studio(user, studio)
    studio.refresh_from_db()
    tasks.launch_session(studio.pk, studio.session_token)
    studio.refresh_from_db()
    return studio


def report_ready(client, studio, agent_endpoint="http://10.0.3.7:9999"):
    """What the agent sends once its IDE answers, from the job's host."""
    body = json.dumps({"endpoint": "http://10.0.3.7:8888", "agent_endpoint": agent_endpoint})
    response = client.post(
        "/api/sessions/ready", body, "application/json", HTTP_AUTHORIZATION=f"Bearer {studio.session_token}"
    )
    assert response.status_code == 200
    studio.refresh_from_db()
    return studio


def login_operator(client):
    """A superuser: an operator of the platform, in the Django admin."""
    client.force_login(get_user_model().objects.create_superuser("operator", "operator@example.org", "x"))


def job_id(studio):
    return studio.session_handle["job_id"]


# The admin's pages: adding, editing and checking an AWS Batch compute environment.


def form(**changes):
    fields = {
        "name": "batch", "region": REGION, "job_queue": "studios", "work_dir": "s3://lab-work/studios",
        "writable_data_paths": "s3://lab-results/\ns3://scratch/team-a/", "max_cpus": 16, "max_memory_mb": 65536,
        "access_key_id": "", "secret_access_key": "",
    }  # fmt: skip
    fields.update(changes)
    return {name: value for name, value in fields.items() if value is not None}


def add_url(workspace):
    return reverse("environment_add", args=[workspace.organization.slug, workspace.slug])


def edit_url(environment):
    workspace = environment.workspace
    return reverse("environment_edit", args=[workspace.organization.slug, workspace.slug, environment.pk])


def test_an_admin_adds_a_batch_environment_that_is_checked_at_once(client, workspace, members, aws):
    aws.make_queue()
    client.force_login(members[Role.ADMIN])
    response = client.post(add_url(workspace), form(), follow=True)
    environment = ComputeEnvironment.objects.get(workspace=workspace, name="batch")
    assert (environment.kind, environment.region, environment.job_queue) == ("aws-batch", REGION, "studios")
    assert environment.writable_data_paths == ["s3://lab-results/", "s3://scratch/team-a/"]
    assert environment.status == "available" and environment.status_checked is not None
    assert not environment.has_credentials
    page = response.content.decode()
    assert "Saved batch; studios can start on it." in page
    assert "the platform's own role" in page


def queue_invalid(aws):
    aws.make_queue()
    aws.queue("studios").status = "INVALID"


def environment_invalid(aws):
    aws.make_queue()
    aws.make_invalid("studios-ec2", "CLIENT_ERROR - The instance profile studios-ecs does not exist")


@pytest.mark.parametrize(
    "setup, reason",
    [
        (lambda aws: aws.make_queue(state="DISABLED"), "Job queue studios is DISABLED; enable it in AWS Batch."),
        (queue_invalid, "Job queue studios is INVALID"),
        (
            lambda aws: aws.make_queue(environments=[("studios-ec2", "EC2", "DISABLED")]),
            "No compute environment of job queue studios is ENABLED and VALID: studios-ec2 is DISABLED and VALID.",
        ),
        (
            environment_invalid,
            "studios-ec2 is ENABLED and INVALID (CLIENT_ERROR - The instance profile studios-ecs does not exist)",
        ),
        (
            lambda aws: aws.make_queue(environments=[("studios-fargate", "FARGATE", "ENABLED")]),
            "Job queue studios runs on studios-fargate (FARGATE); studios need EC2 or Spot compute environments",
        ),
        (lambda aws: None, "Job queue studios does not exist in eu-west-1"),
    ],
    ids=["queue-disabled", "queue-invalid", "environment-disabled", "environment-invalid", "fargate", "no-queue"],
)
def test_a_queue_that_cannot_run_sessions_makes_the_environment_invalid_and_studios_cannot_start(
    client, workspace, members, aws, setup, reason
):
    setup(aws)
    client.force_login(members[Role.ADMIN])
    saved = client.post(add_url(workspace), form(), follow=True).content.decode()
    environment = ComputeEnvironment.objects.get(name="batch")
    assert environment.status == "invalid" and reason in environment.status_reason
    assert "Saved batch, but studios cannot start on it" in saved
    studio = make_studio(
        workspace, name="blocked", author=members[Role.MAINTAIN], compute_environment_id=environment.pk
    )
    client.force_login(members[Role.MAINTAIN])
    started = client.post(reverse("studio_start", args=[studio.pk]), follow=True).content.decode()
    assert "Compute environment batch is invalid" in started
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED


def test_the_periodic_check_follows_the_queue(environment, aws, eager_tasks, settings):
    assert "studios.tasks.check_compute_environments" in {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    tasks.check_compute_environments()
    environment.refresh_from_db()
    assert environment.status == "available"
    aws.client.update_job_queue(jobQueue="studios", state="DISABLED")
    tasks.check_compute_environments()
    environment.refresh_from_db()
    assert (environment.status, environment.status_reason) == (
        "invalid",
        "Job queue studios is DISABLED; enable it in AWS Batch.",
    )
    aws.client.update_job_queue(jobQueue="studios", state="ENABLED")
    tasks.check_compute_environments()
    environment.refresh_from_db()
    assert (environment.status, environment.status_reason) == ("available", "")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "local"}, "A compute environment named &#x27;local&#x27; already exists"),
        ({"region": "Ireland"}, "Enter an AWS region such as eu-west-1."),
        ({"job_queue": ""}, "This field is required."),
        ({"job_queue": "my queue"}, "Enter the job queue&#x27;s name"),
        ({"work_dir": "/srv/work"}, "keep checkpoints on S3: enter s3://bucket/prefix"),
        ({"writable_data_paths": "s3://okay/\n/data/local"}, "Not an s3:// bucket or prefix: /data/local."),
        ({"access_key_id": KEY_ID}, "Enter both the access key ID and the secret access key."),
        ({"secret_access_key": SECRET}, "Enter both the access key ID and the secret access key."),
        ({"access_key_id": "not-a-key", "secret_access_key": SECRET}, "An AWS access key ID is 16 or more"),
        ({"max_cpus": 0}, "Studios need at least 1 CPU."),
    ],
)
def test_bad_input_is_explained_and_saves_nothing(client, workspace, members, aws, changes, message):
    client.force_login(members[Role.ADMIN])
    response = client.post(add_url(workspace), form(**changes))
    page = response.content.decode()
    assert response.status_code == 400
    assert message in page
    assert SECRET not in page
    assert not ComputeEnvironment.objects.filter(kind="aws-batch").exists()


def test_editing_keeps_replaces_or_forgets_the_key_pair(client, workspace, members, aws):
    aws.make_queue()
    client.force_login(members[Role.ADMIN])
    client.post(add_url(workspace), form(access_key_id=KEY_ID, secret_access_key=SECRET))
    environment = ComputeEnvironment.objects.get(name="batch")
    assert environment.aws_credentials() == {"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET}
    assert backend_for(environment).client._request_signer._credentials.access_key == KEY_ID

    client.post(edit_url(environment), form(max_cpus=8))
    environment.refresh_from_db()
    assert environment.max_cpus == 8
    assert environment.aws_credentials() == {"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET}

    client.post(
        edit_url(environment), form(access_key_id="AKIAI44QH8DHBEXAMPLE", secret_access_key="je7MtGbClwBF/2Zp9Utk")
    )
    environment.refresh_from_db()
    assert environment.aws_credentials()["aws_access_key_id"] == "AKIAI44QH8DHBEXAMPLE"

    client.post(edit_url(environment), form(forget_credentials="on"))
    environment.refresh_from_db()
    assert not environment.has_credentials and environment.status == "available"


def test_the_secret_is_stored_encrypted_and_never_shown_or_logged(client, workspace, members, aws, caplog):
    caplog.set_level(logging.DEBUG)
    aws.make_queue()
    client.force_login(members[Role.ADMIN])
    saved = client.post(add_url(workspace), form(access_key_id=KEY_ID, secret_access_key=SECRET))
    assert saved.wsgi_request.sensitive_post_parameters == ("secret_access_key",)  # error reports hide it
    environment = ComputeEnvironment.objects.get(name="batch")
    assert SECRET not in environment.sealed_credentials and KEY_ID not in environment.sealed_credentials
    studio = make_studio(workspace, name="rnaseq", author=members[Role.MAINTAIN], compute_environment_id=environment.pk)
    studio = launch(members[Role.MAINTAIN], studio)
    tasks.reconcile_sessions()
    pages = {
        "list": client.get(reverse("environment_list", args=[workspace.organization.slug, workspace.slug])),
        "edit": client.get(edit_url(environment)),
        "studio": client.get(studio.get_absolute_url()),
    }
    login_operator(client)
    pages["admin list"] = client.get("/admin/studios/computeenvironment/")
    pages["admin change"] = client.get(f"/admin/studios/computeenvironment/{environment.pk}/change/")
    for name, page in pages.items():
        assert page.status_code == 200, name
        assert SECRET not in page.content.decode(), name
        assert KEY_ID not in page.content.decode(), name
    assert "an access key pair (encrypted, never shown)" in pages["admin change"].content.decode()
    assert "A key pair is stored (never shown)" in pages["edit"].content.decode()
    assert SECRET not in json.dumps(aws.describe(job_id(studio)))
    assert SECRET not in caplog.text


def test_the_django_admin_changes_credentials_without_showing_them(client, environment, aws):
    login_operator(client)
    url = f"/admin/studios/computeenvironment/{environment.pk}/change/"
    page = client.get(url).content.decode()
    fields = {
        "workspace": environment.workspace_id, "name": "batch", "kind": "aws-batch", "region": REGION,
        "job_queue": "studios", "work_dir": "s3://lab-work/studios", "writable_data_paths": '["s3://lab-results/"]',
        "min_cpus": 1, "max_cpus": 16, "min_memory_mb": 512, "max_memory_mb": 65536,
        "access_key_id": KEY_ID, "secret_access_key": SECRET,
    }  # fmt: skip
    assert 'name="secret_access_key"' in page
    response = client.post(url, fields)
    assert response.status_code == 302
    assert response.wsgi_request.sensitive_post_parameters == ("secret_access_key",)
    environment.refresh_from_db()
    assert environment.aws_credentials()["aws_secret_access_key"] == SECRET
    assert environment.status == "available" and environment.status_checked is not None
    assert SECRET not in client.get(url).content.decode()


def test_credentials_sealed_under_another_key_make_the_environment_invalid(client, workspace, members, aws, settings):
    aws.make_queue()
    client.force_login(members[Role.ADMIN])
    client.post(add_url(workspace), form(access_key_id=KEY_ID, secret_access_key=SECRET))
    settings.STUDIOS_SECRETS_KEY = Fernet.generate_key().decode()
    tasks.check_compute_environment(ComputeEnvironment.objects.get(name="batch").pk)
    environment = ComputeEnvironment.objects.get(name="batch")
    assert environment.status == "invalid"
    assert (
        "cannot be decrypted with this platform's STUDIOS_SECRETS_KEY; an admin must enter them again"
        in environment.status_reason
    )


# Starting: the job a start submits.


def test_a_start_submits_a_job_sized_and_tagged_for_the_studio_with_the_agents_environment(
    workspace, studio, maintainer, aws, settings
):
    studio.datasets.set(
        [
            make_dataset(workspace, "reads", "s3://lab-data/reads/"),
            make_dataset(workspace, "out", "s3://lab-results/out/"),
        ]
    )
    studio = launch(maintainer, studio)
    job = aws.describe(job_id(studio))
    assert job["jobName"] == f"studio-{studio.pk}"
    assert job["jobQueue"].endswith(":job-queue/studios")
    assert job["tags"] == {
        "studios:workspace": str(workspace),
        "studios:studio": "rnaseq",
        "studios:user": maintainer.username,
    }
    assert aws.job(job_id(studio)).container_overrides["resourceRequirements"] == [
        {"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "4096"},
    ]  # fmt: skip
    environment = environment_of(job)
    assert environment["STUDIOS_SESSION_TOKEN"] == studio.session_token
    assert environment["STUDIOS_CALLBACK_URL"] == settings.STUDIOS_PLATFORM_URL + "/api/sessions"
    assert environment["STUDIOS_BASE_PATH"] == studio.connect_path
    assert environment["STUDIOS_WORK_DIR"] == "s3://lab-work/studios"
    assert sorted(json.loads(environment["STUDIOS_MOUNTS"]), key=lambda mount: mount["name"]) == [
        {"name": "out", "uri": "s3://lab-results/out/", "writable": True},
        {"name": "reads", "uri": "s3://lab-data/reads/", "writable": False},
    ]
    assert environment["STUDIOS_RESTORE"] == "{}"
    assert (environment["HOME"], environment["STUDIOS_BIND_HOST"], environment["AWS_DEFAULT_REGION"]) == (
        "/workspace",
        "0.0.0.0",
        REGION,
    )
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(environment)
    definition = aws.client.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]
    assert definition["jobDefinitionName"] == "studios-jupyterlab-4_2"
    assert definition["containerProperties"]["image"] == settings.STUDIOS_TEMPLATE_IMAGES["jupyterlab"]
    assert definition["containerProperties"]["command"] == AGENT_COMMAND
    assert studio.startup_steps[0]["name"] == "Provisioning compute"


def revisions(aws, name):
    definitions = aws.client.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"]
    return sorted((d["revision"], d["containerProperties"]["image"]) for d in definitions)


def test_one_job_definition_per_image_is_reused_and_registered_again_when_the_image_changes(
    workspace, environment, maintainer, aws, settings
):
    def start_new(name):
        studio = make_studio(workspace, name=name, author=maintainer, compute_environment_id=environment.pk)
        return aws.describe(job_id(launch(maintainer, studio)))["jobDefinition"]

    built_here = settings.STUDIOS_TEMPLATE_IMAGES["jupyterlab"]
    first, second = start_new("one"), start_new("two")
    assert first == second
    assert revisions(aws, "studios-jupyterlab-4_2") == [(1, built_here)]

    pushed = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/studios/jupyterlab:4.2"
    settings.STUDIOS_TEMPLATE_IMAGES = {**settings.STUDIOS_TEMPLATE_IMAGES, "jupyterlab": pushed}
    assert start_new("three").endswith("studios-jupyterlab-4_2:2")
    assert start_new("four").endswith("studios-jupyterlab-4_2:2")
    assert revisions(aws, "studios-jupyterlab-4_2") == [(1, built_here), (2, pushed)]

    settings.STUDIOS_TEMPLATE_IMAGES = {
        **settings.STUDIOS_TEMPLATE_IMAGES,
        "jupyterlab": pushed.replace(":4.2", ":4.3"),
    }
    assert start_new("five").endswith("studios-jupyterlab-4_3:1")


def test_a_job_queue_that_refuses_the_job_errors_the_start(studio, maintainer, aws):
    aws.client.delete_job_queue(jobQueue="studios")
    studio = launch(maintainer, studio)
    assert studio.status == StudioStatus.ERRORED
    assert studio.status_reason.startswith(
        "Could not provision compute: AWS Batch did not accept the job on queue studios"
    )


def test_a_template_not_verified_on_batch_is_not_offered(client, workspace, environment, maintainer):
    client.force_login(maintainer)
    response = client.post(
        reverse("studio_add", args=[workspace.organization.slug, workspace.slug]),
        {"name": "r", "template": "rstudio", "compute_environment": environment.pk, "cpus": 2, "memory_mb": 4096},
    )
    assert response.status_code == 400
    assert (
        "RStudio Server cannot run on batch. RStudio Server is not offered on AWS Batch yet"
        in response.content.decode()
    )


# Status follows the job.


@pytest.mark.parametrize(
    "state, progress",
    [
        ("SUBMITTED", "AWS Batch job SUBMITTED: queued"),
        ("PENDING", "AWS Batch job PENDING: waiting to be scheduled"),
        ("RUNNABLE", "AWS Batch job RUNNABLE: waiting for an instance with room for it in the compute environment"),
        ("STARTING", "AWS Batch job STARTING: pulling the image and starting the container"),
        ("RUNNING", "AWS Batch job RUNNING: starting the session agent"),
    ],
)
def test_while_starting_the_batch_state_is_the_provisioning_step(client, studio, maintainer, aws, state, progress):
    studio = launch(maintainer, studio)
    aws.set_state(job_id(studio), state)
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING
    assert studio.startup_steps == [{"name": "Provisioning compute", "state": "in-progress", "message": progress}]
    client.force_login(maintainer)
    assert progress in client.get(studio.get_absolute_url(), HTTP_HX_REQUEST="true").content.decode()


def test_a_running_job_whose_agent_is_ready_makes_the_studio_running(client, studio, maintainer, aws):
    studio = launch(maintainer, studio)
    aws.set_state(job_id(studio), "RUNNING")
    studio = report_ready(client, studio)
    assert studio.status == StudioStatus.RUNNING
    assert (studio.session_endpoint, studio.agent_endpoint) == ("http://10.0.3.7:8888", "http://10.0.3.7:9999")
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.RUNNING


@pytest.mark.parametrize(
    "status, batch_reason, expected",
    [
        (
            "FAILED",
            "OutOfMemoryError: Container killed due to memory usage",
            "The session ran out of memory (limit 4096 MB) and AWS Batch ended it; changes since the last checkpoint "
            "may be lost. Start it again with more memory.",
        ),
        (
            "FAILED",
            "CannotPullContainerError: Error response from daemon: pull access denied for studios/jupyterlab",
            "AWS Batch could not pull the session image: CannotPullContainerError: Error response from daemon: pull "
            "access denied for studios/jupyterlab. Check that the image exists in its registry",
        ),
        (
            "FAILED",
            "ResourceInitializationError: AccessDeniedException: not authorized to perform ecr:GetAuthorizationToken",
            "AWS Batch reported a permissions problem: ResourceInitializationError: AccessDeniedException: not "
            "authorized to perform ecr:GetAuthorizationToken. Check the IAM roles of the compute environment",
        ),
        (
            "FAILED",
            "Host EC2 (instance i-0123456789abcdef0) terminated.",
            "The instance running the session went away: Host EC2 (instance i-0123456789abcdef0) terminated. AWS may "
            "reclaim Spot instances at any time",
        ),
        (
            "FAILED",
            "CannotStartContainerError: Error response from daemon: failed to create task",
            "AWS Batch could not start the session's container: CannotStartContainerError",
        ),
        (
            "FAILED",
            "Essential container in task exited",
            "The AWS Batch job failed: Essential container in task exited.",
        ),
        ("SUCCEEDED", None, "The session ended on its own (its AWS Batch job SUCCEEDED). Start the studio again."),
    ],
    ids=["memory", "image-pull", "permissions", "host-gone", "container-start", "other", "succeeded"],
)
def test_a_job_that_ends_errors_the_studio_with_batchs_reason_in_words_a_user_can_act_on(
    client, studio, maintainer, aws, status, batch_reason, expected
):
    studio = launch(maintainer, studio)
    aws.set_state(job_id(studio), "RUNNING")
    studio = report_ready(client, studio)
    aws.set_state(job_id(studio), status, batch_reason)
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.ERRORED
    assert expected in studio.status_reason
    client.force_login(maintainer)
    assert escape(expected) in client.get(studio.get_absolute_url()).content.decode()


def test_a_job_that_fails_while_starting_marks_the_step_errored(studio, maintainer, aws):
    studio = launch(maintainer, studio)
    aws.set_state(job_id(studio), "FAILED", "CannotPullContainerError: manifest unknown")
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.ERRORED
    assert studio.startup_steps[0]["state"] == "errored"
    assert (
        "could not pull the session image: CannotPullContainerError: manifest unknown"
        in studio.startup_steps[0]["message"]
    )


def test_a_job_batch_no_longer_knows_errors_the_studio(client, studio, maintainer, aws):
    studio = launch(maintainer, studio)
    Studio.objects.filter(pk=studio.pk).update(session_handle={**studio.session_handle, "job_id": "gone-job"})
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.ERRORED
    assert studio.status_reason == "The AWS Batch job gone-job no longer exists. Start the studio again."


def test_a_start_still_waiting_after_30_minutes_is_errored_with_a_hint_at_the_batch_compute_environment(
    studio, maintainer, aws
):
    studio = launch(maintainer, studio)
    job = job_id(studio)
    aws.set_state(job, "RUNNABLE")
    Studio.objects.filter(pk=studio.pk).update(status_changed=timezone.now() - timedelta(minutes=31))
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.ERRORED
    assert studio.status_reason == (
        "The session did not become ready within 30 minutes. Its AWS Batch job is still RUNNABLE. Check that the "
        "compute environments of job queue studios are ENABLED and VALID and have capacity for 4 vCPUs and 4096 MB "
        "(their maximum vCPUs and instance types). Then start the studio again."
    )
    assert aws.describe(job)["status"] == "FAILED"  # it no longer waits for capacity


# Stopping.


@contextmanager
def agent_control(aws, studio, answers=True):
    """The agent's control endpoint as the platform sees it: it records each request and the job's state then,
    and answers like the agent once its checkpoint is saved, or never (a hung session)."""
    requests = []
    hang = threading.Event()

    class Control(BaseHTTPRequestHandler):
        def do_POST(self):
            requests.append((self.path, self.headers.get("Authorization"), aws.job(job_id(studio)).status))
            if not answers:
                hang.wait(10)
                return
            body = json.dumps({"size_bytes": 10, "stored_bytes": 10, "recorded": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        hang.set()
        server.shutdown()
        server.server_close()


def running(client, studio, maintainer, aws, agent_endpoint):
    studio = launch(maintainer, studio)
    aws.set_state(job_id(studio), "RUNNING")
    return report_ready(client, studio, agent_endpoint)


def test_stop_saves_a_final_checkpoint_through_the_agent_then_terminates_the_job(client, studio, maintainer, aws):
    with agent_control(aws, studio) as (endpoint, requests):
        studio = running(client, studio, maintainer, aws, endpoint)
        token, job = studio.session_token, job_id(studio)
        lifecycle.stop_studio(maintainer, studio)
        tasks.stop_session(studio.pk)
    assert requests == [("/checkpoint", f"Bearer {token}", "RUNNING")]
    described = aws.describe(job)
    assert (described["status"], described["statusReason"]) == ("FAILED", "Stopped from Studios")
    studio.refresh_from_db()
    assert (studio.status, studio.status_reason) == (StudioStatus.STOPPED, "")


def test_a_stop_the_agent_does_not_answer_in_time_still_ends_the_job_and_says_what_may_be_lost(
    client, studio, maintainer, aws, settings
):
    settings.STUDIOS_STOP_TIMEOUT_SECONDS = 1
    with agent_control(aws, studio, answers=False) as (endpoint, requests):
        studio = running(client, studio, maintainer, aws, endpoint)
        lifecycle.session_checkpoint_saved(studio.session_token, "manifests/a", "0" * 64, 1024)
        saved = studio.current_checkpoint
        saved.refresh_from_db()
        job = job_id(studio)
        lifecycle.stop_studio(maintainer, studio)
        tasks.stop_session(studio.pk)
    assert len(requests) == 1
    assert aws.describe(job)["status"] == "FAILED"
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED
    assert studio.status_reason == (
        "The session did not save a final checkpoint when asked, so it was stopped anyway: changes made since "
        f"checkpoint rnaseq_1 was saved at {saved.saved:%Y-%m-%d %H:%M} UTC may be lost."
    )
    client.force_login(maintainer)
    assert "changes made since checkpoint rnaseq_1 was saved" in client.get(studio.get_absolute_url()).content.decode()


def test_a_stuck_stop_can_be_forced_after_ten_minutes_which_ends_the_job(
    client, studio, maintainer, aws, eager_tasks, django_capture_on_commit_callbacks
):
    with agent_control(aws, studio, answers=False) as (endpoint, _):
        studio = running(client, studio, maintainer, aws, endpoint)
    job = job_id(studio)
    lifecycle.stop_studio(maintainer, studio)  # and its stop task never finishes
    client.force_login(maintainer)
    force_stop = reverse("studio_force_stop", args=[studio.pk])
    assert force_stop not in client.get(studio.get_absolute_url()).content.decode()
    early = client.post(force_stop, follow=True).content.decode()
    assert (
        "rnaseq is still saving its final checkpoint; force stop is offered once a stop has taken 10 minutes." in early
    )
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPING

    Studio.objects.filter(pk=studio.pk).update(status_changed=timezone.now() - timedelta(minutes=10, seconds=1))
    assert force_stop in client.get(studio.get_absolute_url(), HTTP_HX_REQUEST="true").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(force_stop, follow=True).content.decode()
    assert "Force stopped rnaseq; changes since its last checkpoint may be lost." in done
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED
    assert studio.status_reason == (
        "Force stopped by maintain before the session saved a final checkpoint: changes made in this session "
        "(none of it was saved) may be lost."
    )
    assert aws.describe(job)["status"] == "FAILED"
    again = client.post(force_stop, follow=True).content.decode()
    assert "rnaseq is stopped; only a studio that is stopping can be force stopped." in again
