"""Idle stop: a studio with one is stopped (after a warning) only when no member used it and its IDE did no work
for its idle period; a member's request or the IDE's work moves the stop later. Off unless chosen."""

from datetime import timedelta

import pytest
from django.utils import timezone

from checkpoints.models import Checkpoint
from studios import lifecycle, tasks, tokens
from studios.models import Role, Session, Studio, StudioStatus
from studios.supervisor import work

from .api import TokenClient
from .factories import make_member, make_running, make_studio, make_workspace
from .live import Browser, run, wait_for_status, wait_until

API = "/api/v1"
IDLE = "Idle for 30 minutes: nobody used it and its IDE did no work."


@pytest.fixture
def maintainer(workspace):
    return make_member(workspace, Role.MAINTAIN)


@pytest.fixture
def no_dispatch(monkeypatch):
    stops = []
    monkeypatch.setattr(lifecycle, "dispatch", lambda name, *args: stops.append(args))
    return stops


def idle_for(studio, minutes, work=None):
    """As if nobody had used ``studio`` for ``minutes`` since it started running (and its IDE last worked at
    ``work``)."""
    long_ago = timezone.now() - timedelta(minutes=minutes)
    Studio.objects.filter(pk=studio.pk).update(status_changed=long_ago, last_activity=None)
    Session.objects.filter(pk=studio.session_id).update(last_work=work)


def status(studio):
    return Studio.objects.values_list("status", "status_reason").get(pk=studio.pk)


def test_a_studio_without_an_idle_stop_is_never_stopped_for_idleness(workspace, no_dispatch):
    studio = make_studio(workspace)
    make_running(studio)
    idle_for(studio, 600)
    tasks.stop_due_studios()
    tasks.stop_due_studios()
    assert status(studio) == (StudioStatus.RUNNING, "")


def test_an_idle_studio_is_warned_of_then_stopped_and_a_members_use_moves_the_stop(workspace, no_dispatch):
    studio = make_studio(workspace, idle_stop_minutes=30)
    make_running(studio)
    idle_for(studio, 20)
    assert Studio.objects.get(pk=studio.pk).stop_warning[1] == IDLE
    tasks.stop_due_studios()  # warned: it stops in 10 minutes
    assert Session.objects.get(pk=studio.session_id).warned_for is not None
    idle_for(studio, 31)
    lifecycle.keep_studio(make_member(workspace, Role.CONNECT), studio)  # "Keep it running", as a request would
    tasks.stop_due_studios()
    assert status(studio) == (StudioStatus.RUNNING, "") and no_dispatch == []
    idle_for(studio, 31)
    tasks.stop_due_studios()  # warned of the new stop time (late: nothing ran for a while)...
    assert status(studio) == (StudioStatus.RUNNING, "")
    tasks.stop_due_studios()  # ...and stopped at the next tick
    assert status(studio) == (StudioStatus.STOPPING, IDLE)


def test_a_view_member_cannot_keep_a_studio_running(workspace, client):
    studio = make_studio(workspace, idle_stop_minutes=30)
    make_running(studio)
    client.force_login(make_member(workspace, Role.VIEW))
    response = client.post(f"/studios/{studio.pk}/keep/")
    assert response.status_code == 403
    assert Studio.objects.get(pk=studio.pk).last_activity is None


def test_the_ides_reported_work_keeps_it_running_and_a_report_says_nothing_else(workspace, client, no_dispatch):
    studio = make_studio(workspace, idle_stop_minutes=30)
    make_running(studio)
    idle_for(studio, 60)
    token = studio.session.token
    headers = {"Authorization": f"Bearer {token}"}
    lie = client.post("/api/sessions/working", {"idle_since": "x"}, content_type="application/json", headers=headers)
    assert lie.status_code == 400 and Session.objects.get(pk=studio.session_id).last_work is None
    assert client.post("/api/sessions/working", {}, content_type="application/json", headers=headers).status_code == 200
    tasks.stop_due_studios()
    tasks.stop_due_studios()
    assert status(studio) == (StudioStatus.RUNNING, "")
    assert Session.objects.get(pk=studio.session_id).warned_for is None


def test_an_idle_stop_is_chosen_at_add_within_its_bounds(workspace, maintainer):
    workspace.idle_stop_minutes = 60
    workspace.save()
    api = TokenClient(tokens.issue_token(maintainer, "t")[1])
    url = f"{API}/workspaces/{workspace.organization.slug}/{workspace.slug}/studios/"
    environment = workspace.compute_environments.get().pk
    assert api.post(url, {"name": "a", "computeEnvironment": environment}).json()["idleStopMinutes"] == 60
    off = api.post(url, {"name": "b", "computeEnvironment": environment, "idleStopMinutes": None})
    assert off.json()["idleStopMinutes"] is None
    refused = api.post(url, {"name": "c", "computeEnvironment": environment, "idleStopMinutes": 5})
    assert refused.status_code == 400
    assert refused.json()["errors"]["idleStopMinutes"] == ["An idle stop is 30 to 1440 minutes, or empty for none."]


def test_a_computing_cell_is_never_idle_and_a_truly_idle_real_session_is_stopped_with_a_final_checkpoint(
    live_platform, tmp_path, settings
):
    settings.STUDIOS_WORK_CHECK_SECONDS = 1
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, name="idle", author=maintainer, cpus=1, memory_mb=1024, idle_stop_minutes=30)
    browser = Browser(live_platform, maintainer)
    assert browser.post_form(f"/studios/{studio.pk}/start/").status_code == 302
    studio = wait_for_status(studio, StudioStatus.RUNNING)

    # A cell computes (it says so first, then keeps its kernel busy) while nobody uses the studio for an hour.
    code = "import time\nprint('computing', flush=True)\nend = time.time() + 12\nwhile time.time() < end: pass"
    assert run(live_platform, studio, maintainer, code) == "computing"
    idle_for(studio, 60)
    wait_until(lambda: Session.objects.get(pk=studio.session_id).last_work, 30, "the supervisor to see work")
    tasks.stop_due_studios()
    tasks.stop_due_studios()
    assert status(studio) == (StudioStatus.RUNNING, "")
    assert Session.objects.get(pk=studio.session_id).warned_for is None

    # Once the cell is done, the supervisor sees no more work.
    def quiet():
        last_work = Session.objects.get(pk=studio.session_id).last_work
        return timezone.now() - last_work > timedelta(seconds=4)

    wait_until(quiet, 60, "the kernel to be idle")
    idle_for(studio, 60, work=timezone.now() - timedelta(minutes=60))
    tasks.stop_due_studios()  # warned
    assert status(studio) == (StudioStatus.RUNNING, "")
    # A member's request through the proxy moves the stop later.
    settings.STUDIOS_ACTIVITY_WRITE_SECONDS = 0  # written at once, though the cell's requests were just written
    assert browser.session(studio).http.get("/api/status").status_code == 200
    tasks.stop_due_studios()
    assert status(studio) == (StudioStatus.RUNNING, "")

    idle_for(studio, 60, work=timezone.now() - timedelta(minutes=60))
    tasks.stop_due_studios()  # warned
    tasks.stop_due_studios()  # stopped, the normal way
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert studio.status_reason == IDLE
    checkpoint = Checkpoint.objects.get(pk=studio.session.checkpoint_id)
    assert checkpoint.state == Checkpoint.State.FINALIZED


def test_the_work_check_reads_the_cpu_of_a_real_vs_code_sessions_container(live_platform, tmp_path, settings):
    """VS Code and RStudio have no API saying they work: their container's CPU time is what the supervisor reads."""
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, author=maintainer, template="vscode", cpus=2, memory_mb=2048, idle_stop_minutes=30)
    lifecycle.start_studio(maintainer, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING, timeout=600)  # a first pull of its image takes a while
    if "container" not in studio.session.handle:
        pytest.skip("sessions here are plain processes, without a cgroup of their own")
    used = work.cgroup_cpu_seconds(studio.session.handle["container"])
    assert used is not None and used > 0  # code-server's own start-up
    lifecycle.stop_studio(maintainer, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
