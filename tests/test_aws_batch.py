"""AWS Batch compute environments against moto in-process: the admin's pages and their checks,
the jobs a start submits, how Batch's states and reasons reach the studio, stop and force stop,
and the credentials that never come back out."""

import html
import json
import logging
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.client import BaseClient
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from moto import mock_aws

from studios import lifecycle, tasks
from studios.backends import Mount, backend_for
from studios.backends.aws_batch import PORTS, SUPERVISOR_COMMAND
from studios.models import ComputeEnvironment, Role, Session, Studio, StudioStatus
from studios.supervisor.protocol import SessionConfig

from .conftest import host_address
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
def environment(workspace, aws):
    aws.make_queue()
    environment = ComputeEnvironment.objects.create(
        workspace=workspace,
        name="batch",
        kind="aws-batch",
        region=REGION,
        job_queue="studios",
        work_dir="s3://lab-work/studios",
        writable_data_paths=["s3://lab-results/"],
        max_cpus=16,
    )
    tasks.check_compute_environment(environment.pk)
    environment.refresh_from_db()
    return environment


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
    tasks.launch_session(studio.session.pk)
    studio.refresh_from_db()
    return studio


READY_STEPS = [
    {"name": "Provisioning compute", "state": "succeeded", "message": ""},
    {"name": "Starting JupyterLab", "state": "succeeded", "message": ""},
]


def report(client, studio, kind, body):
    """A report from the job's supervisor, with its token: the platform's answer."""
    authorization = f"Bearer {studio.session.token}"
    return client.post(f"/api/sessions/{kind}", json.dumps(body), "application/json", HTTP_AUTHORIZATION=authorization)


def report_ready(client, studio):
    """What the supervisor sends once its IDE answers; it says nothing of where it is."""
    assert report(client, studio, "ready", {"steps": READY_STEPS}).status_code == 200
    studio.refresh_from_db()
    return studio


def manifest_key(studio_id):
    """A key a supervisor may report a checkpoint's manifest under: in the studio's own folder of the store."""
    return f"manifests/studio-{studio_id}/{uuid.uuid4().hex}.json.zst"


def run_job(aws, studio):
    """Batch places the job on its instance and runs it; the platform finds it there on its next reconcile."""
    aws.place(job_id(studio))
    aws.set_state(job_id(studio), "RUNNING")
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    return studio


def addresses(studio):
    """Where the backend says the session's gate and control endpoint are: this host, the job's instance."""
    handle = studio.session.handle
    return f"http://{host_address()}:{handle['port']}", f"http://{host_address()}:{handle['control_port']}"


def login_operator(client):
    """A superuser: an operator of the platform, in the Django admin."""
    client.force_login(get_user_model().objects.create_superuser("operator", "operator@example.org", "x"))


def job_id(studio):
    return studio.session.handle["job_id"]


# The admin's pages: adding, editing and checking an AWS Batch compute environment.


def form(**changes):
    fields = {
        "name": "batch",
        "region": REGION,
        "job_queue": "studios",
        "work_dir": "s3://lab-work/studios",
        "writable_data_paths": "s3://lab-results/\ns3://scratch/team-a/",
        "max_cpus": 16,
        "max_memory_mb": 65536,
        "access_key_id": "",
        "secret_access_key": "",
    }
    fields.update(changes)
    return {name: value for name, value in fields.items() if value is not None}


def add_url(workspace):
    return reverse("environment_add", args=[workspace.organization.slug, workspace.slug])


def edit_url(environment):
    workspace = environment.workspace
    return reverse("environment_edit", args=[workspace.organization.slug, workspace.slug, environment.pk])


def list_url(workspace):
    return reverse("environment_list", args=[workspace.organization.slug, workspace.slug])


def test_an_admin_adds_a_batch_environment_whose_check_is_queued(
    client, workspace, members, aws, eager_tasks, django_capture_on_commit_callbacks
):
    aws.make_queue()
    client.force_login(members[Role.ADMIN])
    with django_capture_on_commit_callbacks(execute=True):
        saved = client.post(add_url(workspace), form(), follow=True).content.decode()
    assert "Saved batch; checking whether studios can start on it." in saved
    assert "checking…" in saved
    environment = ComputeEnvironment.objects.get(workspace=workspace, name="batch")
    assert (environment.kind, environment.region, environment.job_queue) == ("aws-batch", REGION, "studios")
    assert environment.writable_data_paths == ["s3://lab-results/", "s3://scratch/team-a/"]
    assert environment.status == "available" and environment.status_checked is not None
    assert not environment.has_credentials
    page = client.get(list_url(workspace)).content.decode()
    assert "checking…" not in page
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
    client, workspace, members, aws, setup, reason, eager_tasks, django_capture_on_commit_callbacks
):
    setup(aws)
    client.force_login(members[Role.ADMIN])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(add_url(workspace), form())
    environment = ComputeEnvironment.objects.get(name="batch")
    assert environment.status == "invalid" and reason in environment.status_reason
    assert html.escape(reason) in client.get(list_url(workspace)).content.decode()
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


def test_editing_keeps_replaces_or_forgets_the_key_pair(
    client, workspace, members, aws, eager_tasks, django_capture_on_commit_callbacks
):
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

    with django_capture_on_commit_callbacks(execute=True):
        client.post(edit_url(environment), form(forget_credentials="on"))
    environment.refresh_from_db()
    assert not environment.has_credentials and environment.status == "available"


def test_the_secret_is_stored_encrypted_and_never_shown_or_logged(
    client, workspace, members, aws, caplog, eager_tasks, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    aws.make_queue()
    client.force_login(members[Role.ADMIN])
    with django_capture_on_commit_callbacks(execute=True):
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


def test_the_django_admin_changes_credentials_without_showing_them(
    client, environment, aws, eager_tasks, django_capture_on_commit_callbacks
):
    login_operator(client)
    url = f"/admin/studios/computeenvironment/{environment.pk}/change/"
    page = client.get(url).content.decode()
    fields = {
        "workspace": environment.workspace_id,
        "name": "batch",
        "kind": "aws-batch",
        "region": REGION,
        "job_queue": "studios",
        "work_dir": "s3://lab-work/studios",
        "writable_data_paths": '["s3://lab-results/"]',
        "min_cpus": 1,
        "max_cpus": 16,
        "min_memory_mb": 512,
        "max_memory_mb": 65536,
        "access_key_id": KEY_ID,
        "secret_access_key": SECRET,
    }
    assert 'name="secret_access_key"' in page
    with django_capture_on_commit_callbacks(execute=True):
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


def test_a_start_submits_a_job_sized_and_tagged_for_the_studio_running_its_supervisor(
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
    # The studio's memory is the sandbox's; the job has room for the supervisor besides.
    assert aws.job(job_id(studio)).container_overrides["resourceRequirements"] == [
        {"type": "VCPU", "value": "4"},
        {"type": "MEMORY", "value": "4608"},
    ]
    environment = environment_of(job)
    config = SessionConfig.from_environ(environment)
    handle = studio.session.handle
    assert (config.token, config.platform_url, config.base_path) == (
        studio.session.token,
        settings.STUDIOS_PLATFORM_URL,
        studio.connect_path,
    )
    assert (config.work_dir, config.manifest_prefix, config.restore) == (
        "s3://lab-work/studios",
        f"studio-{studio.pk}",
        {},
    )
    assert sorted(config.mounts, key=lambda mount: mount.name) == [
        Mount(name="out", uri="s3://lab-results/out/", writable=True),
        Mount(name="reads", uri="s3://lab-data/reads/", writable=False),
    ]
    assert (config.cpus, config.memory_mb, config.layer_mb) == (4, 4096, settings.STUDIOS_WRITABLE_LAYER_MB)
    # Sandboxed in the job's container, reached from the platform on the ports the platform chose.
    assert (config.isolation, config.rootfs, config.container_id) == ("container", "/", handle["container"])
    assert config.container_id.startswith(f"studio-{studio.pk}-")
    assert config.hidden == (config.session_dir,) and config.session_dir.startswith("/tmp/")
    assert (config.bind_host, config.port, config.control_port) == ("0.0.0.0", handle["port"], handle["control_port"])
    assert {config.port, config.control_port} <= set(PORTS) and config.port != config.control_port
    assert environment["AWS_DEFAULT_REGION"] == REGION
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(environment)
    definition = aws.client.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]
    tag = settings.STUDIOS_TEMPLATE_IMAGES["jupyterlab"].rsplit(":", 1)[1]  # images/tags.json's
    assert definition["jobDefinitionName"] == f"studios-jupyterlab-{tag.replace('.', '_')}"
    assert definition["containerProperties"]["image"] == settings.STUDIOS_TEMPLATE_IMAGES["jupyterlab"]
    assert definition["containerProperties"]["command"] == SUPERVISOR_COMMAND == ["python", "-m", "studios.supervisor"]
    assert definition["containerProperties"]["privileged"] is True
    assert studio.session.steps[0]["name"] == "Provisioning compute"
    assert (studio.session.endpoint, studio.session.control_endpoint) == ("", "")  # Batch has not placed it yet


def revisions(aws, name):
    definitions = aws.client.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"]
    return sorted((d["revision"], d["containerProperties"]["image"]) for d in definitions)


def test_one_job_definition_per_image_is_reused_and_registered_again_when_the_image_changes(
    workspace, environment, maintainer, aws, settings
):
    def start_new(name):
        studio = make_studio(workspace, name=name, author=maintainer, compute_environment_id=environment.pk)
        return aws.describe(job_id(launch(maintainer, studio)))["jobDefinition"]

    built_here = (
        "127.0.0.1:5055/studios/jupyterlab:4.2"  # a tag of the test's own: the default follows images/tags.json
    )
    settings.STUDIOS_TEMPLATE_IMAGES = {**settings.STUDIOS_TEMPLATE_IMAGES, "jupyterlab": built_here}
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
    "state, placed, progress",
    [
        ("SUBMITTED", False, "AWS Batch job SUBMITTED: queued"),
        ("PENDING", False, "AWS Batch job PENDING: waiting to be scheduled"),
        (
            "RUNNABLE",
            False,
            "AWS Batch job RUNNABLE: waiting for an instance with room for it in the compute environment",
        ),
        ("STARTING", True, "AWS Batch job STARTING: pulling the image and starting the container"),
        ("RUNNING", False, "AWS Batch job RUNNING: locating its instance"),
        ("RUNNING", True, "AWS Batch job RUNNING: starting the session supervisor"),
    ],
)
def test_while_starting_the_batch_state_is_the_provisioning_step(
    client, studio, maintainer, aws, state, placed, progress
):
    studio = launch(maintainer, studio)
    if placed:
        aws.place(job_id(studio))
    aws.set_state(job_id(studio), state)
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING
    assert studio.session.steps == [{"name": "Provisioning compute", "state": "in-progress", "message": progress}]
    client.force_login(maintainer)
    assert progress in client.get(studio.get_absolute_url(), HTTP_HX_REQUEST="true").content.decode()


def test_a_session_planned_but_not_submitted_yet_is_left_to_its_start(studio, maintainer, aws):
    lifecycle.start_studio(maintainer, studio)
    studio.refresh_from_db()
    planned = backend_for(studio.compute_environment).plan(tasks.session_spec(studio.session))
    assert lifecycle.record_launch(studio.session.pk, planned)  # what the start task does before it submits
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING
    assert studio.session.steps[0]["message"] == "Submitting the AWS Batch job"


def test_the_platform_reaches_the_session_where_batch_runs_its_job_never_where_a_report_says(
    client, studio, maintainer, aws
):
    studio = launch(maintainer, studio)
    aws.set_state(job_id(studio), "RUNNING")
    tasks.reconcile_sessions()  # Batch has not said which instance runs it yet
    studio = report_ready(client, studio)
    assert studio.status == StudioStatus.STARTING
    assert (studio.session.endpoint, studio.session.control_endpoint) == ("", "")

    claimed = {"endpoint": "http://203.0.113.9:8888", "control_endpoint": "http://203.0.113.9:9999"}
    refused = report(client, studio, "ready", {"steps": READY_STEPS, **claimed})
    assert refused.status_code == 400
    assert refused.json() == {"error": "a ready report cannot say control_endpoint, endpoint"}

    studio = run_job(aws, studio)
    assert studio.status == StudioStatus.RUNNING
    assert (studio.session.endpoint, studio.session.control_endpoint) == addresses(studio)
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.RUNNING


def test_a_session_located_before_its_supervisor_is_ready_runs_once_it_is(client, studio, maintainer, aws):
    studio = run_job(aws, launch(maintainer, studio))
    assert studio.status == StudioStatus.STARTING
    assert (studio.session.endpoint, studio.session.control_endpoint) == addresses(studio)
    assert report_ready(client, studio).status == StudioStatus.RUNNING


def test_a_session_ready_before_it_is_located_is_looked_for_at_once(
    client, studio, maintainer, aws, eager_tasks, django_capture_on_commit_callbacks
):
    studio = launch(maintainer, studio)
    aws.place(job_id(studio))
    aws.set_state(job_id(studio), "RUNNING")
    with django_capture_on_commit_callbacks(execute=True):
        report_ready(client, studio)  # no reconcile: the ready report has the platform look for it
    studio.refresh_from_db()
    assert studio.status == StudioStatus.RUNNING
    assert (studio.session.endpoint, studio.session.control_endpoint) == addresses(studio)


def test_a_job_on_an_instance_that_cannot_be_located_says_why_while_it_starts(studio, maintainer, aws):
    studio = launch(maintainer, studio)
    aws.placed[job_id(studio)] = "arn:aws:ecs:eu-west-1:123456789012:container-instance/0123456789abcdef"
    aws.set_state(job_id(studio), "RUNNING")
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING and studio.session.endpoint == ""
    assert studio.session.steps[0]["message"] == (
        "AWS Batch job RUNNING: cannot locate its instance: its container instance ARN "
        "arn:aws:ecs:eu-west-1:123456789012:container-instance/0123456789abcdef does not name its cluster; "
        "turn on ECS's long ARN format"
    )


@pytest.fixture
def aws_calls(monkeypatch):
    """Every AWS API call made from here on, as service:Operation."""
    calls = []
    make_api_call = BaseClient._make_api_call

    def recorded(client, operation, params):
        calls.append(f"{client.meta.service_model.service_name}:{operation}")
        return make_api_call(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recorded)
    return calls


def test_each_action_makes_the_calls_the_backend_documents_and_an_instance_is_located_once(
    studio, maintainer, aws, aws_calls
):
    aws_calls.clear()
    studio = launch(maintainer, studio)
    assert aws_calls == ["batch:DescribeJobDefinitions", "batch:RegisterJobDefinition", "batch:SubmitJob"]
    aws.place(job_id(studio))
    aws.set_state(job_id(studio), "RUNNING")
    aws_calls.clear()
    tasks.reconcile_sessions()
    assert aws_calls == ["batch:DescribeJobs", "ecs:DescribeContainerInstances", "ec2:DescribeInstances"]
    aws_calls.clear()
    tasks.reconcile_sessions()
    assert aws_calls == ["batch:DescribeJobs"]


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
    studio = report_ready(client, run_job(aws, launch(maintainer, studio)))
    assert studio.status == StudioStatus.RUNNING
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
    step = studio.session.steps[0]
    assert step["state"] == "errored"
    assert "could not pull the session image: CannotPullContainerError: manifest unknown" in step["message"]


def test_a_job_batch_no_longer_knows_errors_the_studio(client, studio, maintainer, aws):
    studio = launch(maintainer, studio)
    Session.objects.filter(pk=studio.session.pk).update(handle={**studio.session.handle, "job_id": "gone-job"})
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
def supervisor_control(aws, studio, answers=True):
    """The supervisor's control endpoint on the job's instance (this host), on the port the platform chose:
    it records each request and the job's state then, and answers like the supervisor, or never (a hung session).
    Asked to stop, the supervisor takes its final checkpoint and exits, and with it the job ends."""
    requests = []
    hang = threading.Event()

    class Control(BaseHTTPRequestHandler):
        def do_POST(self):
            requests.append((self.path, self.headers.get("Authorization"), aws.job(job_id(studio)).status))
            if not answers:
                hang.wait(10)
                return
            if self.path == "/stop":
                aws.set_state(job_id(studio), "SUCCEEDED")
            body = json.dumps({"stopping": True}).encode()
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer((host_address(), studio.session.handle["control_port"]), Control)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield requests
    finally:
        hang.set()
        server.shutdown()
        server.server_close()


def test_stop_asks_the_supervisor_which_saves_a_final_checkpoint_and_ends_the_job(client, studio, maintainer, aws):
    studio = report_ready(client, run_job(aws, launch(maintainer, studio)))
    final = {"manifest_key": manifest_key(studio.pk), "manifest_sha256": "0" * 64, "size_bytes": 1024, "final": True}
    with supervisor_control(aws, studio) as requests:
        token, job = studio.session.token, job_id(studio)
        lifecycle.stop_studio(maintainer, studio)
        assert report(client, studio, "checkpoint", final).status_code == 200  # as the supervisor stops
        tasks.stop_session(studio.pk)
    assert requests == [("/stop", f"Bearer {token}", "RUNNING")]
    assert aws.describe(job)["status"] == "SUCCEEDED"  # it ended on its own, not terminated
    studio.refresh_from_db()
    assert (studio.status, studio.status_reason) == (StudioStatus.STOPPED, "")


def test_a_stop_the_supervisor_does_not_answer_in_time_still_ends_the_job_and_says_what_may_be_lost(
    client, studio, maintainer, aws, settings
):
    settings.STUDIOS_STOP_TIMEOUT_SECONDS = 1
    studio = report_ready(client, run_job(aws, launch(maintainer, studio)))
    manifest = {"manifest_key": manifest_key(studio.pk), "manifest_sha256": "0" * 64, "size_bytes": 1024}
    assert report(client, studio, "checkpoint", manifest).status_code == 200
    saved = studio.session.checkpoint
    saved.refresh_from_db()
    with supervisor_control(aws, studio, answers=False) as requests:
        job = job_id(studio)
        lifecycle.stop_studio(maintainer, studio)
        tasks.stop_session(studio.pk)
    assert len(requests) == 1  # then Batch was asked: it ends the job (SIGTERM, then SIGKILL)
    assert aws.describe(job)["status"] == "FAILED"
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED
    assert studio.status_reason == (
        "The session could not save a final checkpoint (it did not say why). Changes made since "
        f"checkpoint rnaseq_1 was saved at {saved.saved:%Y-%m-%d %H:%M} UTC may be lost."
    )
    client.force_login(maintainer)
    assert "Changes made since checkpoint rnaseq_1 was saved" in client.get(studio.get_absolute_url()).content.decode()


def test_a_checkpoint_report_for_another_studios_manifest_is_refused(client, studio, maintainer, aws):
    studio = report_ready(client, run_job(aws, launch(maintainer, studio)))
    foreign = {"manifest_key": manifest_key(studio.pk + 1), "manifest_sha256": "0" * 64}
    refused = report(client, studio, "checkpoint", foreign)
    assert refused.status_code == 400
    assert refused.json() == {"error": "a checkpoint's manifest must be one of this studio's"}
    studio.session.checkpoint.refresh_from_db()
    assert studio.session.checkpoint.saved is None


def test_a_stuck_stop_can_be_forced_after_ten_minutes_which_ends_the_job(
    client, studio, maintainer, aws, eager_tasks, django_capture_on_commit_callbacks
):
    studio = report_ready(client, run_job(aws, launch(maintainer, studio)))
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
        "Force stopped by maintain before the session saved a final checkpoint. Changes made in this session "
        "(none of it was saved) may be lost."
    )
    assert aws.describe(job)["status"] == "FAILED"
    again = client.post(force_stop, follow=True).content.decode()
    assert "rnaseq is stopped; only a studio that is stopping can be force stopped." in again
