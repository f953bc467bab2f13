"""The job a start submits, and how Batch's states and reasons reach the studio."""

from datetime import timedelta

import pytest
from botocore.client import BaseClient
from celery.exceptions import Retry
from django.utils import timezone
from django.utils.html import escape

from studios import lifecycle, tasks
from studios.backends import Mount, backend_for
from studios.backends.aws_batch import PORTS
from studios.models import Session, Studio, StudioStatus
from studios.supervisor.protocol import SUPERVISOR_COMMAND, SessionConfig

from ..factories import make_dataset, make_studio
from ..moto_batch import READY_STEPS, REGION, addresses, environment_of, job_id, launch, report, report_ready, run_job


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
    assert job["jobName"] == studio.session.handle["container"]  # unique to the start (``recover``)
    assert job["jobName"].startswith(f"studio-{studio.pk}-")
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
    assert (config.token, config.platform_url, config.base_path) == ("", settings.STUDIOS_PLATFORM_URL, "/")
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


def test_a_launched_start_follows_the_batch_state_until_it_knows_where_the_session_is(studio, maintainer, aws):
    """What the task queued at launch does on each of its rounds (``follow_start``), a few seconds apart."""
    studio = launch(maintainer, studio)
    for state, progress in (
        ("RUNNABLE", "AWS Batch job RUNNABLE: waiting for an instance with room for it in the compute environment"),
        ("STARTING", "AWS Batch job STARTING: pulling the image and starting the container"),
    ):
        if state == "STARTING":
            aws.place(job_id(studio))
        aws.set_state(job_id(studio), state)
        with pytest.raises(Retry):
            tasks.follow_start(studio.session.pk)
        studio.refresh_from_db()
        assert studio.session.steps[0] == {"name": "Provisioning compute", "state": "in-progress", "message": progress}
    aws.set_state(job_id(studio), "RUNNING")
    tasks.follow_start(studio.session.pk)  # located: its last round
    studio.refresh_from_db()
    assert (studio.session.endpoint, studio.session.control_endpoint) == addresses(studio)
    assert studio.status == StudioStatus.STARTING  # until its supervisor says its IDE answers


def test_a_session_planned_but_not_submitted_yet_is_left_to_its_start(studio, maintainer, aws):
    lifecycle.start_studio(maintainer, studio)
    studio.refresh_from_db()
    planned = backend_for(studio.compute_environment).plan(tasks.session_spec(studio.session))
    assert lifecycle.record_launch(studio.session.pk, planned)  # what the start task does before it submits
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING
    assert studio.session.steps[0]["message"] == "Submitting the AWS Batch job"


def test_a_job_whose_id_was_never_recorded_is_found_by_its_name_and_ended_with_its_session(studio, maintainer, aws):
    lifecycle.start_studio(maintainer, studio)
    studio.refresh_from_db()
    backend, spec = backend_for(studio.compute_environment), tasks.session_spec(studio.session)
    planned = backend.plan(spec)
    assert lifecycle.record_launch(studio.session.pk, planned)
    job = backend.launch(spec, planned)["job_id"]  # submitted by a worker that dies before recording it
    lifecycle.stop_studio(maintainer, studio)
    tasks.stop_session(studio.pk)
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED
    assert aws.describe(job)["status"] == "FAILED"


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
