"""The admin's pages for an AWS Batch compute environment and their checks, and the credentials that never
come back out."""

import html
import json
import logging

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.urls import reverse

from studios import tasks
from studios.backends import backend_for
from studios.models import ComputeEnvironment, Role, StudioStatus

from ..factories import make_studio
from ..moto_batch import (
    REGION,
    job_id,
    launch,
)

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def login_operator(client):
    """A superuser: an operator of the platform, in the Django admin."""
    client.force_login(get_user_model().objects.create_superuser("operator", "operator@example.org", "x"))


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
