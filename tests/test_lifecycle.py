"""The studio state machine: every allowed and refused transition, the limits, and their races."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from studios import lifecycle
from studios.exceptions import ActionRefused
from studios.models import (
    ALLOWED_TRANSITIONS,
    ActiveMount,
    Event,
    InvalidTransition,
    Role,
    Session,
    Studio,
    StudioStatus,
)

from .factories import make_dataset, make_member, make_running, make_studio, make_workspace
from .live import wait_until

ALL = list(StudioStatus)


def set_status(studio, status, **fields):
    Studio.objects.filter(pk=studio.pk).update(status=status, **fields)
    studio.refresh_from_db()
    return studio


@pytest.mark.parametrize("before", ALL)
@pytest.mark.parametrize("after", ALL)
def test_transition_table(db, before, after):
    studio = Studio(status=before)
    if after in ALLOWED_TRANSITIONS[before]:
        studio.transition(after)
        assert studio.status == after
    else:
        with pytest.raises(InvalidTransition):
            studio.transition(after)
        assert studio.status == before


@pytest.fixture
def owner(workspace):
    return make_member(workspace, Role.OWNER)


@pytest.fixture
def studio(workspace, owner):
    return make_studio(workspace, name="genomics", author=owner)


def test_new_studio_is_stopped(workspace, owner):
    studio = lifecycle.add_studio(
        owner, workspace, name="fresh", compute_environment=workspace.compute_environments.get(), cpus=2, memory_mb=2048
    )
    assert studio.status == StudioStatus.STOPPED


@pytest.mark.parametrize("status", [StudioStatus.STOPPED, StudioStatus.ERRORED])
def test_start_from_stopped_or_errored(studio, owner, status):
    set_status(studio, status, status_reason="earlier failure")
    lifecycle.start_studio(owner, studio)
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING
    assert studio.status_reason == ""
    assert studio.session.token and studio.session.started_by == owner
    assert studio.startup_steps[0]["name"] == "Provisioning compute"


@pytest.mark.parametrize("status", [StudioStatus.STARTING, StudioStatus.RUNNING, StudioStatus.STOPPING])
def test_start_refused_while_active(studio, owner, status):
    set_status(studio, status)
    with pytest.raises(ActionRefused, match=f"genomics is {status}"):
        lifecycle.start_studio(owner, studio)
    studio.refresh_from_db()
    assert studio.status == status


def test_stop_running_studio(studio, owner):
    set_status(studio, StudioStatus.RUNNING)
    lifecycle.stop_studio(owner, studio)
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPING


def test_a_starting_studio_can_be_stopped(studio, owner):
    """A start that hangs must never leave the studio with no action but waiting."""
    lifecycle.start_studio(owner, studio)
    lifecycle.stop_studio(owner, studio)
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPING


@pytest.mark.parametrize("status", [StudioStatus.STOPPED, StudioStatus.ERRORED, StudioStatus.STOPPING])
def test_stop_refused_unless_starting_or_running(studio, owner, status):
    set_status(studio, status)
    with pytest.raises(ActionRefused, match="only a starting or running studio"):
        lifecycle.stop_studio(owner, studio)


@pytest.mark.parametrize("status", [StudioStatus.STARTING, StudioStatus.RUNNING, StudioStatus.STOPPING])
def test_delete_refused_while_active(studio, owner, status):
    set_status(studio, status)
    with pytest.raises(ActionRefused, match="stop it before deleting"):
        lifecycle.delete_studio(owner, studio)
    assert Studio.objects.filter(pk=studio.pk).exists()


@pytest.mark.parametrize("status", [StudioStatus.STOPPED, StudioStatus.ERRORED])
def test_delete_when_stopped_or_errored(studio, owner, status):
    set_status(studio, status)
    lifecycle.delete_studio(owner, studio)
    assert not Studio.objects.filter(pk=studio.pk).exists()


def test_start_refused_on_invalid_compute_environment(studio, owner):
    studio.compute_environment.status = "invalid"
    studio.compute_environment.status_reason = "The job queue is DISABLED."
    studio.compute_environment.save()
    with pytest.raises(ActionRefused, match="job queue is DISABLED"):
        lifecycle.start_studio(owner, studio)


def test_start_past_the_workspace_cap_is_refused(db):
    workspace = make_workspace(max_running_studios=1)
    owner = make_member(workspace, Role.OWNER)
    first, second = make_studio(workspace, author=owner), make_studio(workspace, author=owner)
    lifecycle.start_studio(owner, first)
    with pytest.raises(ActionRefused, match="allows 1 running studio at once"):
        lifecycle.start_studio(owner, second)
    second.refresh_from_db()
    assert second.status == StudioStatus.STOPPED


def test_a_data_path_held_by_a_running_studio_cannot_be_mounted(workspace, owner):
    reads = make_dataset(workspace, "reads", "/data/reads")
    nested = make_dataset(workspace, "run1", "/data/reads/run1/")
    first = make_studio(workspace, author=owner, datasets=[reads])
    second = make_studio(workspace, author=owner, datasets=[nested])
    lifecycle.start_studio(owner, first)
    with pytest.raises(ActionRefused, match=f"mounted by running studio {first.name}"):
        lifecycle.start_studio(owner, second)
    assert not ActiveMount.objects.filter(studio=second).exists()
    # Once the first studio has stopped, the path is free again.
    set_status(first, StudioStatus.STOPPING)
    lifecycle.session_stopped(first.pk)
    lifecycle.start_studio(owner, second)
    assert ActiveMount.objects.get(studio=second).data_path == "/data/reads/run1/"


def test_mounts_under_a_writable_data_path_are_writable(workspace, owner):
    scratch = make_dataset(workspace, "scratch", "/data/scratch/me")
    reads = make_dataset(workspace, "reads", "/data/reads")
    studio = make_studio(workspace, author=owner, datasets=[scratch, reads])
    lifecycle.start_studio(owner, studio)
    assert {m.dataset.name: m.writable for m in studio.active_mounts.all()} == {"scratch": True, "reads": False}


def test_the_database_refuses_a_second_mount_of_a_data_path(workspace, owner):
    reads = make_dataset(workspace)
    first, second = make_studio(workspace, author=owner), make_studio(workspace, author=owner)
    ActiveMount.objects.create(workspace=workspace, studio=first, dataset=reads, data_path="/data/reads/")
    with pytest.raises(IntegrityError):
        ActiveMount.objects.create(workspace=workspace, studio=second, dataset=reads, data_path="/data/reads/")


def steps(*names):
    return [{"name": name, "state": "succeeded", "message": ""} for name in names]


class TestSessionReports:
    def test_ready_makes_a_starting_studio_running_at_the_endpoint_the_backend_chose(self, studio, owner):
        lifecycle.start_studio(owner, studio)
        studio.refresh_from_db()
        assert lifecycle.record_launch(
            studio.session_id, {"endpoint": "http://127.0.0.1:5555", "control": "http://127.0.0.1:5556"}
        )
        assert lifecycle.session_ready(studio.session.token, steps("Provisioning compute"))
        studio.refresh_from_db()
        assert studio.status == StudioStatus.RUNNING
        assert (studio.session.endpoint, studio.session.control_endpoint) == (
            "http://127.0.0.1:5555",
            "http://127.0.0.1:5556",
        )

    def test_ready_waits_for_the_backend_to_locate_the_session(self, studio, owner):
        lifecycle.start_studio(owner, studio)
        studio.refresh_from_db()
        assert lifecycle.session_ready(studio.session.token, steps("Provisioning compute"))
        studio.refresh_from_db()
        assert studio.status == StudioStatus.STARTING
        assert lifecycle.session_located(studio.session_id, "http://10.0.3.7:8888", "http://10.0.3.7:8889")
        studio.refresh_from_db()
        assert studio.status == StudioStatus.RUNNING and studio.session.endpoint == "http://10.0.3.7:8888"

    def test_reports_with_a_wrong_token_change_nothing(self, studio, owner):
        lifecycle.start_studio(owner, studio)
        assert not lifecycle.session_ready("not-the-token", steps("Provisioning compute"))
        assert not lifecycle.session_ready("", steps("Provisioning compute"))
        studio.refresh_from_db()
        assert studio.status == StudioStatus.STARTING

    def test_a_failure_errors_the_studio_only_once_its_compute_is_gone(
        self, workspace, studio, owner, django_capture_on_commit_callbacks, monkeypatch
    ):
        from studios import tasks

        reaped = []
        monkeypatch.setattr(tasks.reap_session, "apply_async", lambda args, *_, **__: reaped.append(tuple(args)))
        studio.datasets.set([make_dataset(workspace)])
        lifecycle.start_studio(owner, studio)
        studio.refresh_from_db()
        with django_capture_on_commit_callbacks(execute=True):
            assert lifecycle.session_failed(studio.session.token, "JupyterLab exited with code 1")
        studio.refresh_from_db()
        assert studio.status == StudioStatus.STARTING  # until the task has ended its compute
        assert reaped == [(studio.session_id, "JupyterLab exited with code 1")]
        tasks.reap_session(*reaped[0])
        studio.refresh_from_db()
        assert studio.status == StudioStatus.ERRORED
        assert studio.status_reason == "JupyterLab exited with code 1"
        assert studio.startup_steps[0]["state"] == "errored"
        assert studio.session.token is None and studio.session.end_reason == "JupyterLab exited with code 1"
        assert not studio.active_mounts.exists()

    def test_a_reported_failure_keeps_its_reason_when_the_reconcile_finds_the_session_gone_first(
        self, studio, owner, django_capture_on_commit_callbacks, monkeypatch
    ):
        from studios import tasks

        monkeypatch.setattr(tasks.reap_session, "apply_async", lambda *args, **kwargs: None)
        lifecycle.start_studio(owner, studio)
        studio.refresh_from_db()
        with django_capture_on_commit_callbacks(execute=True):
            assert lifecycle.session_failed(studio.session.token, "The session's network ended unexpectedly.")
        lifecycle.fail_studio(studio.pk, "The session's supervisor ended unexpectedly.")  # the reconcile, first
        studio.refresh_from_db()
        assert studio.status_reason == "The session's network ended unexpectedly."

    def test_the_session_report_endpoint_checks_the_token_and_what_the_report_says(self, client, studio, owner):
        lifecycle.start_studio(owner, studio)
        studio.refresh_from_db()
        lifecycle.record_launch(studio.session_id, {"endpoint": "http://127.0.0.1:5555"})
        token = studio.session.token
        url = "/api/sessions/ready"
        body = '{"steps": [{"name": "Provisioning compute", "state": "succeeded", "message": ""}]}'
        assert client.post(url, body, "application/json", HTTP_AUTHORIZATION="Bearer wrong").status_code == 409
        auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        assert client.post(url, "not json", "application/json", **auth).status_code == 400
        # A session does not say where it is reached, nor send anything the protocol does not know.
        forged = '{"endpoint": "http://127.0.0.1:22", "steps": []}'
        assert client.post(url, forged, "application/json", **auth).status_code == 400
        assert client.post("/api/sessions/become-admin", body, "application/json", **auth).status_code == 400
        odd_step = '{"steps": [{"name": "Provisioning compute", "state": "hacked", "message": ""}]}'
        assert client.post(url, odd_step, "application/json", **auth).status_code == 400
        studio.refresh_from_db()
        assert studio.status == StudioStatus.STARTING
        assert client.post(url, body, "application/json", **auth).status_code == 200
        studio.refresh_from_db()
        assert studio.status == StudioStatus.RUNNING and studio.session.endpoint == "http://127.0.0.1:5555"

    def test_a_checkpoint_report_names_only_the_studios_own_manifests(self, client, studio, owner):
        lifecycle.start_studio(owner, studio)
        studio.refresh_from_db()
        auth = {"HTTP_AUTHORIZATION": f"Bearer {studio.session.token}"}
        report = {"manifest_sha256": "a" * 64, "size_bytes": 10, "final": False}
        for key in ("manifests/studio-999/" + "0" * 32 + ".json.zst", "../../etc/passwd", "manifests/x.json.zst"):
            response = client.post(
                "/api/sessions/checkpoint", {**report, "manifest_key": key}, "application/json", **auth
            )
            assert response.status_code == 400
        own = f"manifests/studio-{studio.pk}/" + "0" * 32 + ".json.zst"
        response = client.post("/api/sessions/checkpoint", {**report, "manifest_key": own}, "application/json", **auth)
        assert response.status_code == 200
        studio.session.checkpoint.refresh_from_db()
        assert studio.session.checkpoint.manifest_key == own

    def test_pages_that_could_not_save_as_the_session_stopped_are_named_in_the_stop(self, client, studio, owner):
        lifecycle.start_studio(owner, studio)
        studio.refresh_from_db()
        auth = {"HTTP_AUTHORIZATION": f"Bearer {studio.session.token}"}
        url = "/api/sessions/pages-saved"
        # Only while it stops, and only counts.
        assert client.post(url, {"saved": 1, "unsaved": 1}, "application/json", **auth).status_code == 409
        lifecycle.stop_studio(owner, studio)
        lie = {"saved": 1, "unsaved": 0, "documents": ["analysis.ipynb"]}
        assert client.post(url, lie, "application/json", **auth).status_code == 400
        assert client.post(url, {"saved": 2, "unsaved": 1}, "application/json", **auth).status_code == 200
        note = "A page open in the session could not save its documents in time: their unsaved changes are lost."
        studio.refresh_from_db()
        assert studio.status == StudioStatus.STOPPING and studio.status_reason == note
        assert lifecycle.session_stopped(studio.pk)
        studio.refresh_from_db()
        assert studio.status == StudioStatus.STOPPED and studio.status_reason == note
        assert Event.objects.get(session=studio.session, kind=Event.Kind.STOPPED).message == note


def test_a_start_older_than_the_timeout_becomes_errored(studio, owner, settings):
    from studios.tasks import reconcile_sessions

    lifecycle.start_studio(owner, studio)
    Studio.objects.filter(pk=studio.pk).update(status_changed=timezone.now() - timedelta(minutes=31))
    reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.ERRORED
    assert "did not become ready within 30 minutes" in studio.status_reason


def test_a_recent_start_is_left_alone(studio, owner):
    from studios.tasks import reconcile_sessions

    lifecycle.start_studio(owner, studio)
    reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STARTING


# Races: real threads, real PostgreSQL row locks.


def race(functions):
    """Run the functions at the same moment in threads; return what each returned or raised."""
    barrier = threading.Barrier(len(functions))
    results = [None] * len(functions)

    def run(index, function):
        barrier.wait()
        try:
            results[index] = function()
        except Exception as error:
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def refusals(results):
    return [r for r in results if isinstance(r, ActionRefused)]


@pytest.fixture
def race_world(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("races need PostgreSQL's row locks")
    workspace = make_workspace(max_running_studios=1)
    owner = make_member(workspace, Role.OWNER)
    return workspace, owner


def test_two_starts_of_one_studio_race_and_one_wins(race_world):
    workspace, owner = race_world
    studio = make_studio(workspace, author=owner)
    results = race([lambda: lifecycle.start_studio(owner, studio) for _ in range(4)])
    assert len(refusals(results)) == 3, results
    assert all("is starting" in str(r) for r in refusals(results))


def test_starts_racing_past_the_cap_admit_only_one(race_world):
    workspace, owner = race_world
    studios = [make_studio(workspace, author=owner) for _ in range(4)]
    results = race([lambda s=s: lifecycle.start_studio(owner, s) for s in studios])
    assert len(refusals(results)) == 3, results
    assert Studio.objects.filter(status=StudioStatus.STARTING).count() == 1


def test_starts_racing_for_one_data_path_admit_only_one(race_world):
    workspace, owner = race_world
    workspace.max_running_studios = None
    workspace.save()
    reads = make_dataset(workspace)
    studios = [make_studio(workspace, author=owner, datasets=[reads]) for _ in range(4)]
    results = race([lambda s=s: lifecycle.start_studio(owner, s) for s in studios])
    assert len(refusals(results)) == 3, results
    assert ActiveMount.objects.count() == 1


def test_a_session_report_locks_its_studio_before_its_session_as_every_change_of_a_studio_does(race_world):
    """In the other order, a session's report (here its progress; its ticket's redemption in CI) and the reconcile
    (its studio locked, then its session) deadlocked: PostgreSQL ended the report, and the session never ran."""
    workspace, owner = race_world
    studio = make_running(make_studio(workspace, author=owner), status=StudioStatus.STARTING, token="report-token")
    studio_locked, release = threading.Event(), threading.Event()

    def change_of_the_studio():
        try:
            with transaction.atomic():
                Studio.objects.select_for_update().filter(pk=studio.pk).values_list("pk", flat=True).first()
                studio_locked.set()
                release.wait(30)
        finally:
            connection.close()

    def report():
        try:
            return lifecycle.session_progress("report-token", [])
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(change_of_the_studio)
        assert studio_locked.wait(10)
        reported = pool.submit(report)
        wait_until(lambda: waiting_for_a_lock() or reported.done(), 10, "the report to wait for the studio")
        try:
            # The report waits for the studio holding nothing: the change of the studio may go on to its session.
            with transaction.atomic():
                Session.objects.select_for_update(nowait=True).get(pk=studio.session_id)
        finally:
            release.set()
        holder.result(timeout=30)
        assert reported.result(timeout=30) is True


def waiting_for_a_lock():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return cursor.fetchone()[0] > 0
