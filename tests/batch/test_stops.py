"""Stop and force stop of a studio on AWS Batch: the supervisor's final checkpoint, then the job ends."""

import json
import threading
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.urls import reverse
from django.utils import timezone

from studios import lifecycle, tasks
from studios.models import Studio, StudioStatus

from ..conftest import host_address
from ..moto_batch import (
    job_id,
    launch,
    manifest_key,
    report,
    report_ready,
    run_job,
)


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
