"""No secret in what AWS Batch shows of a session's job: its supervisor trades a single-use start ticket for the
session token."""

import json
import logging
from datetime import timedelta

from django.urls import reverse

from studios import tasks
from studios.models import Session, StudioStatus
from studios.supervisor.protocol import TICKET, TICKETS_PATH, SessionConfig

from ..moto_batch import READY_STEPS, environment_of, job_id, launch, report, report_ready, run_job


def redeem(client, ticket):
    return client.post(reverse("redeem_start_ticket"), "{}", "application/json", HTTP_AUTHORIZATION=f"Bearer {ticket}")


def ticket_of(aws, studio):
    return environment_of(aws.describe(job_id(studio)))[TICKET]


def test_nothing_batch_shows_of_the_job_holds_the_session_token(studio, maintainer, aws):
    studio = launch(maintainer, studio)
    token = studio.session.token
    job = aws.describe(job_id(studio))
    shown = [
        job,
        aws.client.list_jobs(jobQueue="studios", jobStatus=job["status"]),
        aws.client.describe_job_definitions(jobDefinitions=[job["jobDefinition"]]),
        aws.client.describe_job_definitions(status="ACTIVE"),
    ]
    assert job_id(studio) in json.dumps(shown[1])
    assert token not in json.dumps(shown, default=str)
    assert SessionConfig.from_environ(environment_of(job)).token == ""
    # The ticket in its place is no token of any session either.
    assert not Session.objects.filter(token=ticket_of(aws, studio)).exists()


def test_the_supervisor_redeems_its_ticket_once_for_the_token(client, studio, maintainer, aws):
    studio = launch(maintainer, studio)
    assert reverse("redeem_start_ticket") == TICKETS_PATH
    answer = redeem(client, ticket_of(aws, studio))
    assert answer.status_code == 200
    assert answer.json() == {"token": studio.session.token}
    # With it, the supervisor reports as the session.
    assert report(client, studio, "progress", {"steps": READY_STEPS[:1]}).status_code == 200


def test_a_ticket_presented_again_while_the_session_starts_ends_the_start_and_its_token(
    client, studio, maintainer, aws, caplog, eager_tasks, django_capture_on_commit_callbacks
):
    """Someone who read the job redeemed its ticket first: the supervisor's own redemption is refused, and so is
    whatever the token taken is presented for; the studio says why."""
    studio = launch(maintainer, studio)
    ticket, token = ticket_of(aws, studio), studio.session.token
    assert redeem(client, ticket).json() == {"token": token}  # the thief's
    with caplog.at_level(logging.WARNING, logger="studios.lifecycle"), django_capture_on_commit_callbacks(execute=True):
        refused = redeem(client, ticket)  # the supervisor's
    assert refused.status_code == 403
    assert "start ticket presented again" in caplog.text
    studio.refresh_from_db()
    assert studio.status == StudioStatus.ERRORED
    assert studio.status_reason.startswith("The session's start ticket was presented twice")
    assert aws.describe(job_id(studio))["status"] == "FAILED"
    authorization = f"Bearer {token}"
    stolen = client.post(
        "/api/sessions/ready", json.dumps({"steps": READY_STEPS}), "application/json", HTTP_AUTHORIZATION=authorization
    )
    assert stolen.status_code == 409


def test_a_ticket_replayed_once_the_session_runs_is_refused_and_the_session_goes_on(
    client, studio, maintainer, aws, caplog
):
    studio = launch(maintainer, studio)
    ticket = ticket_of(aws, studio)
    assert redeem(client, ticket).status_code == 200
    studio = report_ready(client, run_job(aws, studio))
    assert studio.status == StudioStatus.RUNNING
    with caplog.at_level(logging.WARNING, logger="studios.lifecycle"):
        assert redeem(client, ticket).status_code == 403
    assert "start ticket refused" in caplog.text
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.RUNNING
    assert report(client, studio, "working", {}).status_code == 200


def test_a_ticket_is_refused_once_the_start_has_timed_out_and_after_a_new_launch(
    client, studio, maintainer, aws, settings
):
    studio = launch(maintainer, studio)
    first = ticket_of(aws, studio)
    Session.objects.filter(pk=studio.session.pk).update(
        started=studio.session.started - timedelta(seconds=settings.STUDIOS_START_TIMEOUT_SECONDS + 1)
    )
    assert redeem(client, first).status_code == 403
    assert redeem(client, "").status_code == 403
    assert redeem(client, "guessed").status_code == 403
    # A start launched again (its worker died mid-way) submits a job with a ticket of its own.
    Session.objects.filter(pk=studio.session.pk).update(launched=False, started=studio.session.started)
    tasks.launch_session(studio.session.pk)
    studio.refresh_from_db()
    second = ticket_of(aws, studio)
    assert second != first
    assert redeem(client, first).status_code == 403
    assert redeem(client, second).json() == {"token": studio.session.token}
