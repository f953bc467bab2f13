"""Lifespan: each session is stopped the normal way once its lifespan has passed, unless a maintainer extends it;
members are warned before, on the workspace's pages."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from websockets.sync.client import connect

from checkpoints.models import Checkpoint
from studios import lifecycle, presence, tasks
from studios.models import Role, Session, Studio, StudioStatus

from .api import TokenClient
from .factories import make_member, make_running, make_studio
from .live import Browser, run, wait_for_status, wait_until

API = "/api/v1"


@pytest.fixture
def maintainer(workspace):
    return make_member(workspace, Role.MAINTAIN)


@pytest.fixture
def studio(workspace, maintainer):
    return make_studio(workspace, name="rnaseq", author=maintainer)


def logged_in(client, user):
    client.force_login(user)
    return client


def api_as(user):
    from studios import tokens

    return TokenClient(tokens.issue_token(user, "tests")[1])


def hours_between(start, end):
    return (end - start) / timedelta(hours=1)


def test_a_new_studio_gets_the_workspace_default_and_its_session_stops_that_long_after_it_started(
    client, workspace, maintainer
):
    workspace.default_lifespan_hours = 6
    workspace.save()
    form = {"name": "qc", "template": "jupyterlab", "compute_environment": workspace.compute_environments.get().pk}
    response = logged_in(client, maintainer).post(
        reverse("studio_add", args=[workspace.organization.slug, workspace.slug]),
        {**form, "cpus": 1, "memory_mb": 1024},
    )
    assert response.status_code == 302
    studio = Studio.objects.get(name="qc")
    assert studio.lifespan_hours == 6
    lifecycle.start_studio(maintainer, studio)
    session = Studio.objects.get(pk=studio.pk).session
    assert hours_between(session.started, session.stops_at) == 6


def test_a_lifespan_is_chosen_at_add_and_at_start(client, workspace, maintainer, studio):
    environment = workspace.compute_environments.get()
    api = api_as(maintainer)
    added = api.post(
        f"{API}/workspaces/{workspace.organization.slug}/{workspace.slug}/studios/",
        {"name": "long", "computeEnvironment": environment.pk, "lifespanHours": 48},
    )
    assert added.status_code == 201 and added.json()["lifespanHours"] == 48
    started = api.post(f"{API}/studios/{studio.pk}/start/", {"lifespanHours": 3})
    assert started.status_code == 202
    assert started.json()["lifespanHours"] == 3
    session = Studio.objects.get(pk=studio.pk).session
    assert hours_between(session.started, session.stops_at) == 3
    assert started.json()["stopsAt"] is not None and 0 < started.json()["secondsLeft"] <= 3 * 3600


@pytest.mark.parametrize("hours", [0, 121, "eight"])
def test_a_lifespan_outside_1_to_120_hours_is_refused_and_adds_nothing(client, workspace, maintainer, hours):
    environment = workspace.compute_environments.get()
    page = logged_in(client, maintainer).post(
        reverse("studio_add", args=[workspace.organization.slug, workspace.slug]),
        {"name": "qc", "template": "jupyterlab", "compute_environment": environment.pk, "cpus": 1, "memory_mb": 1024}
        | {"lifespan_hours": hours},
    )
    assert page.status_code == 400 and "A lifespan is 1 to 120 hours." in page.content.decode()
    answer = api_as(maintainer).post(
        f"{API}/workspaces/{workspace.organization.slug}/{workspace.slug}/studios/",
        {"name": "qc", "computeEnvironment": environment.pk, "lifespanHours": hours},
    )
    assert answer.status_code == 400
    assert answer.json()["errors"]["lifespanHours"] == ["A lifespan is 1 to 120 hours."]
    assert not Studio.objects.filter(name="qc").exists()


def test_the_list_and_the_detail_page_show_the_time_left(client, workspace, maintainer, studio):
    make_running(studio)
    logged_in(client, maintainer)
    for url in (workspace.get_absolute_url(), studio.get_absolute_url()):
        page = client.get(url).content.decode()
        assert "7\xa0hours, 59\xa0minutes</time> left of 8 h" in page
    stopped = make_studio(workspace, name="idle")
    assert (
        f'id="lifespan-{stopped.pk}" class="lifespan small"></div>'
        in client.get(workspace.get_absolute_url()).content.decode()
    )


def test_extend_moves_the_stop_time_later(client, maintainer, studio):
    make_running(studio)
    before = studio.session.stops_at
    response = logged_in(client, maintainer).post(reverse("studio_extend", args=[studio.pk]), {"hours": 2}, follow=True)
    assert "Extended rnaseq: it now stops at" in response.content.decode()
    assert Session.objects.get(pk=studio.session_id).stops_at == before + timedelta(hours=2)
    answer = api_as(maintainer).post(f"{API}/studios/{studio.pk}/extend/", {"hours": 3})
    assert answer.status_code == 200
    stops_at = Session.objects.get(pk=studio.session_id).stops_at
    assert stops_at == before + timedelta(hours=5)
    assert answer.json()["stopsAt"] == stops_at.isoformat().replace("+00:00", "Z")


def test_extend_stays_within_120_hours_of_the_start(maintainer, studio):
    make_running(studio, stops_at=timezone.now() + timedelta(hours=117))
    api = api_as(maintainer)
    refused = api.post(f"{API}/studios/{studio.pk}/extend/", {"hours": 4})
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "A session runs at most 120 hours from its start; rnaseq can be extended by at most 3 more hours."
    )
    assert api.post(f"{API}/studios/{studio.pk}/extend/", {"hours": 3}).status_code == 200
    refused = api.post(f"{API}/studios/{studio.pk}/extend/", {"hours": 1})
    assert refused.json()["detail"].endswith("rnaseq can be extended no further.")
    assert api.post(f"{API}/studios/{studio.pk}/extend/", {"hours": 0}).json()["errors"] == {
        "hours": ["Extend by 1 hour or more."]
    }


def test_a_stopped_studio_cannot_be_extended(maintainer, studio):
    refused = api_as(maintainer).post(f"{API}/studios/{studio.pk}/extend/", {"hours": 1})
    assert refused.status_code == 409
    assert refused.json()["detail"] == "rnaseq is stopped; only a starting or running studio can be extended."


@pytest.mark.parametrize("role", [Role.CONNECT, Role.LAUNCH, Role.VIEW])
def test_members_below_maintain_cannot_extend(client, workspace, studio, role):
    make_running(studio)
    before = studio.session.stops_at
    member = make_member(workspace, role)
    response = logged_in(client, member).post(reverse("studio_extend", args=[studio.pk]), {"hours": 2})
    assert response.status_code == 403
    assert "You need the maintain role or higher to extend studios" in response.content.decode()
    assert Session.objects.get(pk=studio.session_id).stops_at == before
    page = client.get(studio.get_absolute_url()).content.decode()
    assert "Extend by" not in page and 'class="can-maintain"' not in page


def test_an_expired_studio_is_warned_of_then_stopped_once_with_the_reason(
    maintainer, studio, monkeypatch, django_capture_on_commit_callbacks
):
    make_running(studio, stops_at=timezone.now() - timedelta(seconds=1))
    Session.objects.filter(pk=studio.session_id).update(started=timezone.now() - timedelta(hours=8))
    stops = []
    monkeypatch.setattr(lifecycle, "dispatch", lambda name, *args: stops.append((name, args)))
    with django_capture_on_commit_callbacks(execute=True):
        # No beat ran while the warning was due: this tick warns, the next one stops.
        tasks.stop_due_studios()
        assert Studio.objects.get(pk=studio.pk).status == StudioStatus.RUNNING
        tasks.stop_due_studios()
        tasks.stop_due_studios()  # a second worker, or the next tick
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPING and studio.status_reason == "Lifespan of 8 h reached."
    assert stops == [(lifecycle.STOP_SESSION, (studio.pk,))]
    assert lifecycle.session_stopped(studio.pk)
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED and studio.status_reason == "Lifespan of 8 h reached."


def test_a_studio_with_time_left_is_not_stopped(studio, monkeypatch):
    make_running(studio, stops_at=timezone.now() + timedelta(minutes=1))
    monkeypatch.setattr(lifecycle, "dispatch", lambda name, *args: pytest.fail("nothing is due"))
    tasks.stop_due_studios()
    assert Studio.objects.get(pk=studio.pk).status == StudioStatus.RUNNING


def test_pages_are_warned_once_before_the_lifespan_runs_out_and_again_after_an_extension(
    live_platform, workspace, members
):
    studio = make_studio(workspace, name="rnaseq", author=members[Role.OWNER])
    stops_at = timezone.now() + timedelta(minutes=10)
    make_running(studio, started=stops_at - timedelta(hours=8), stops_at=stops_at)
    headers = {"Cookie": f"sessionid={live_platform.session_cookie(members[Role.VIEW])}"}
    url = live_platform.url.replace("http", "ws") + f"/ws/workspaces/{workspace.pk}/presence/"
    with connect(url, additional_headers=headers, origin=live_platform.url) as page:
        page.recv(timeout=5)  # the avatars it gets on connect
        tasks.stop_due_studios()
        warning = page.recv(timeout=5)
        assert f'id="lifespan-{studio.pk}"' in warning and 'role="alert"' in warning
        assert "<strong>Stops in 9\xa0minutes</strong>: its lifespan of 8 h runs out at" in warning
        assert "Keep it running 1 more hour" in warning
        tasks.stop_due_studios()  # nothing new to say: the next message is the next thing that happens
        Studio.objects.filter(pk=studio.pk).update(description="what happens next")
        presence.studio_changed(studio)
        assert "what happens next" in page.recv(timeout=5)
        lifecycle.extend_studio(members[Role.OWNER], studio, 1)
        Session.objects.filter(pk=studio.session_id).update(stops_at=timezone.now() + timedelta(minutes=5))
        tasks.stop_due_studios()
        assert "<strong>Stops in 4\xa0minutes</strong>" in page.recv(timeout=5)


def test_lifespan_expiry_stops_a_real_session_with_a_final_checkpoint(live_platform, tmp_path):
    from .factories import make_workspace

    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, name="live", author=maintainer, cpus=1, memory_mb=1024, lifespan_hours=2)
    browser = Browser(live_platform, maintainer)
    assert browser.post_form(f"/studios/{studio.pk}/start/").status_code == 302
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    assert (
        run(
            live_platform,
            studio,
            maintainer,
            "import pathlib; print((pathlib.Path.home() / 'notes.txt').write_text('kept'))",
        )
        == "4"
    )
    # Two hours pass: the session's stop time is now.
    now = timezone.now()
    Session.objects.filter(pk=studio.session_id).update(started=now - timedelta(hours=2), stops_at=now)
    tasks.stop_due_studios()  # as Celery beat runs it every minute: the first tick warns (it is late)...
    tasks.stop_due_studios()  # ...the next one stops
    studio = wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert studio.status_reason == "Lifespan of 2 h reached."
    checkpoint = studio.session.checkpoint
    checkpoint.refresh_from_db()
    assert checkpoint.state == Checkpoint.State.FINALIZED
    page = browser.http.get(f"/studios/{studio.pk}/").text
    assert "Lifespan of 2 h reached." in page
    # The next start restores what the final checkpoint saved.
    assert browser.post_form(f"/studios/{studio.pk}/start/").status_code == 302
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    code = "import pathlib; print((pathlib.Path.home() / 'notes.txt').read_text())"
    assert run(live_platform, studio, maintainer, code) == "kept"
    assert browser.post_form(f"/studios/{studio.pk}/stop/").status_code == 302
    wait_until(lambda: Studio.objects.get(pk=studio.pk).status == StudioStatus.STOPPED, 90, "the studio to stop")
