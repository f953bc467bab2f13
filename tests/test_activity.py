"""The activity log: each change of a studio is an event with its actor, shown on the Activity tab and, to admins,
on the workspace's Activity page."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from checkpoints.models import Checkpoint
from studios import lifecycle
from studios.models import Event, Role, StopReason, Studio, StudioStatus

from .factories import make_member, make_studio


@pytest.fixture
def mia(workspace):
    return make_member(workspace, Role.MAINTAIN, username="mia")


def environment(workspace):
    return workspace.compute_environments.get()


def saved_checkpoint(studio, name):
    return Checkpoint.objects.create(
        studio=studio, name=name, state="finalized", manifest_key=f"manifests/{name}", saved=timezone.now()
    )


def run(studio):
    """What a session and its backend report, up to running."""
    session = studio.session
    assert lifecycle.record_launch(session.pk, {"endpoint": "http://127.0.0.1:9"}, launched=True)
    assert lifecycle.session_ready(session.token, [])
    studio.refresh_from_db()
    assert studio.status == StudioStatus.RUNNING
    return studio


def timeline(client, studio):
    page = client.get(studio.get_absolute_url(), {"tab": "activity"}).content.decode()
    return [" ".join(re.sub(r"<[^>]+>", "", item).split()) for item in re.findall(r"<li data-kind.*?</li>", page, re.S)]


def test_each_change_of_a_studio_is_an_event_with_its_actor(client, workspace, mia):
    studio = lifecycle.add_studio(
        mia, workspace, name="atlas", compute_environment=environment(workspace), cpus=2, memory_mb=2048
    )
    studio = lifecycle.change_studio(mia, studio, name="atlas-2", description="", cpus=3, memory_mb=4096, datasets=[])
    saved_checkpoint(studio, "before")
    studio = run(lifecycle.start_studio(mia, studio))
    lifecycle.stop_studio(mia, studio)
    assert lifecycle.session_stopped(studio.pk)
    studio = lifecycle.start_studio(mia, studio)
    assert lifecycle.fail_studio(studio.pk, "The session ended unexpectedly (exit status 137).")

    client.force_login(mia)
    events = timeline(client, studio)
    assert [event.split(" ", 3)[3] for event in events] == [
        "Errored after 0 s: The session ended unexpectedly (exit status 137).",
        "Started by mia with 3 CPUs and 4096 MB, from checkpoint before",
        "Stopped by mia; its session was gone 0 s later (it ran 0 s)",
        "Running, 0 s after the start",
        "Started by mia with 3 CPUs and 4096 MB, from checkpoint before",
        "Renamed from atlas to atlas-2 by mia",
        "Added by mia",
    ]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+ ", event) for event in events)  # with its timezone
    running = studio.events.get(kind=Event.Kind.RUNNING)
    assert running.seconds >= 0 and running.session == studio.sessions.last()


def test_a_force_stop_and_a_delete_name_who_did_them_and_outlive_the_studio(client, workspace, mia):
    studio = run(lifecycle.start_studio(mia, make_studio(workspace, name="stuck", author=mia)))
    lifecycle.stop_studio(mia, studio)
    Studio.objects.filter(pk=studio.pk).update(status_changed=timezone.now() - timedelta(minutes=31))
    olaf = make_member(workspace, Role.MAINTAIN, username="olaf")
    lifecycle.force_stop_studio(olaf, studio)
    assert lifecycle.session_stopped(studio.pk, unsaved="Force stopped by olaf before the final checkpoint")
    stops = studio.events.filter(kind=Event.Kind.STOPPED).order_by("at")
    assert [(stop.reason, stop.actor.username) for stop in stops] == [
        (StopReason.USER, "mia"),
        (StopReason.FORCE, "olaf"),
    ]
    assert all(stop.ended == studio.sessions.get().ended for stop in stops)
    assert "Force stopped by olaf before the final checkpoint" in stops[1].message

    lifecycle.delete_studio(olaf, Studio.objects.get(pk=studio.pk))
    deleted = Event.objects.get(kind=Event.Kind.DELETED)
    assert (deleted.studio, deleted.studio_name, deleted.actor) == (None, "stuck", olaf)
    assert Event.objects.filter(studio_name="stuck").count() == 5  # started, running, two stops, deleted
    admin = make_member(workspace, Role.ADMIN)
    client.force_login(admin)
    page = client.get(reverse("workspace_activity", args=[workspace.organization.slug, workspace.slug]))
    assert "<strong>stuck</strong>: Deleted by olaf" in " ".join(page.content.decode().split())


@pytest.mark.parametrize(
    "reason, said", [(StopReason.LIFESPAN, "its lifespan was over"), (StopReason.IDLE, "it was idle")]
)
def test_the_platform_stops_a_studio_for_a_reason_the_log_keeps(client, workspace, mia, reason, said):
    studio = run(lifecycle.start_studio(mia, make_studio(workspace, name="idle", author=mia)))
    lifecycle.stop_studio(None, studio, reason=reason)
    stop = studio.events.get(kind=Event.Kind.STOPPED)
    assert (stop.actor, stop.reason, stop.ended) == (None, reason, None)
    client.force_login(mia)
    assert timeline(client, studio)[0].endswith(f"Stopped because {said}; stopping")


def test_a_stop_without_a_member_must_say_why(workspace, mia):
    studio = run(lifecycle.start_studio(mia, make_studio(workspace, author=mia)))
    with pytest.raises(ValueError):
        lifecycle.stop_studio(None, studio)
    assert Studio.objects.get(pk=studio.pk).status == StudioStatus.RUNNING
    assert not studio.events.filter(kind=Event.Kind.STOPPED).exists()


def test_start_as_new_says_from_which_checkpoint(workspace, mia):
    parent = make_studio(workspace, name="atlas", author=mia)
    source = saved_checkpoint(parent, "atlas_1")
    clone = lifecycle.start_as_new(mia, source, name="atlas-v2", cpus=1, memory_mb=1024)
    assert [(event.kind, event.details.get("checkpoint")) for event in clone.events.order_by("at", "pk")] == [
        (Event.Kind.STARTED_AS_NEW, "atlas_1"),
        (Event.Kind.STARTED, "atlas_1"),
    ]
    assert clone.events.get(kind=Event.Kind.STARTED_AS_NEW).details["source_studio"] == "atlas"


@pytest.fixture
def busy(workspace, mia):
    """Two studios with 40 events each, by mia and olaf."""
    olaf = make_member(workspace, Role.MAINTAIN, username="olaf")
    studios = [make_studio(workspace, name=name, author=mia) for name in ("alpha", "beta")]
    for studio in studios:
        for n in range(40):
            Event.objects.create(
                workspace=workspace,
                studio=studio,
                studio_name=studio.name,
                kind=Event.Kind.STARTED if n % 2 else Event.Kind.ADDED,
                actor=mia if n % 3 else olaf,
                details={"cpus": 1, "memory_mb": 512, "checkpoint": ""},
            )
    return studios


def test_admins_see_the_workspace_activity_filtered_and_in_pages(client, workspace, busy):
    client.force_login(make_member(workspace, Role.ADMIN))
    url = reverse("workspace_activity", args=[workspace.organization.slug, workspace.slug])

    def shown(**filters):
        page = " ".join(client.get(url, filters).content.decode().split())
        return page.count("<li data-kind="), page

    count, page = shown()
    assert count == 50 and "Page 1 of 2" in page
    assert shown(page=2)[0] == 30
    alpha = busy[0]
    count, page = shown(studio=alpha.pk, member="olaf", kind="added")
    assert count == 7 and "alpha</a></strong>: Added by olaf" in page and "beta" not in page.split('id="timeline"')[1]
    assert shown(kind="nonsense")[0] == 50  # an unknown kind filters nothing out
    count, page = shown(member="olaf")
    assert count == 28 and "Page" not in page
    count, page = shown(member="mia")
    assert count == 50 and 'href="?member=mia&amp;page=2"' in page  # the next page keeps the filter


@pytest.mark.parametrize("role", [Role.MAINTAIN, Role.VIEW])
def test_only_admins_see_the_workspace_activity(client, workspace, role):
    client.force_login(make_member(workspace, role))
    url = reverse("workspace_activity", args=[workspace.organization.slug, workspace.slug])
    assert client.get(url).status_code == 403


def test_non_members_do_not_find_the_workspace_activity(client, workspace, django_user_model):
    client.force_login(django_user_model.objects.create_user("stranger"))
    assert (
        client.get(reverse("workspace_activity", args=[workspace.organization.slug, workspace.slug])).status_code == 404
    )


def test_the_admin_shows_the_activity_log_read_only(client, workspace, busy, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    assert client.get(reverse("admin:studios_event_changelist")).status_code == 200
    event = Event.objects.first()
    assert client.get(reverse("admin:studios_event_add")).status_code == 403
    change = client.get(reverse("admin:studios_event_change", args=[event.pk]))
    assert change.status_code == 200 and 'name="_save"' not in change.content.decode()
    assert client.post(reverse("admin:studios_event_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert Event.objects.filter(pk=event.pk).exists()
