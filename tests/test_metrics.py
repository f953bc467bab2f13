"""Prometheus metrics at /metrics: behind a bearer token, and moving when real sessions start and stop."""

import pytest
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from studios.models import Role, SessionConnection, StudioStatus
from studios.tasks import check_compute_environment

from .factories import make_member, make_studio, make_workspace
from .live import Browser, wait_for_status, wait_until

TOKEN = "scrape-me-0123456789"


def figures(text):
    """{(sample name, sorted labels): value} of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def figure(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


@pytest.fixture
def scrape(client, settings):
    settings.STUDIOS_METRICS_TOKEN = TOKEN

    def scrape():
        response = client.get(reverse("metrics"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
        return figures(response.content.decode())

    return scrape


def test_metrics_are_not_found_unless_a_token_is_set(client, settings, db):
    settings.STUDIOS_METRICS_TOKEN = ""
    assert client.get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.parametrize("authorization", ["", "Bearer wrong", f"Basic {TOKEN}x"])
def test_metrics_need_the_token(client, settings, db, authorization):
    settings.STUDIOS_METRICS_TOKEN = TOKEN
    response = client.get(reverse("metrics"), HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 401 and "studios_" not in response.content.decode()


def test_studios_are_counted_by_status_and_template(scrape, workspace):
    make_studio(workspace, template="vscode")
    make_studio(workspace, template="vscode", status=StudioStatus.RUNNING)
    samples = scrape()
    assert figure(samples, "studios_studios", status="stopped", template="vscode") == 1
    assert figure(samples, "studios_studios", status="running", template="vscode") == 1
    assert ("studios_studios", (("status", "errored"), ("template", "rstudio"))) in samples  # zero, not missing


def test_a_member_connected_through_several_processes_is_counted_once(scrape, workspace):
    studio, other = make_studio(workspace, name="one"), make_studio(workspace, name="two")
    mia, olaf = make_member(workspace, Role.CONNECT), make_member(workspace, Role.CONNECT)
    for connected_studio, member, web_process in ((studio, mia, "p1"), (studio, mia, "p2"), (studio, olaf, "p1")):
        SessionConnection.objects.create(studio=connected_studio, user=member, web_process=web_process)
    SessionConnection.objects.create(studio=other, user=mia, web_process="p1")
    assert figure(scrape(), "studios_connected_members") == 3


def test_a_task_that_fails_is_counted(scrape, db):
    before = figure(scrape(), "studios_celery_task_failures_total", task=check_compute_environment.name)
    check_compute_environment.apply(args=[0])  # no such compute environment
    after = figure(scrape(), "studios_celery_task_failures_total", task=check_compute_environment.name)
    assert after == before + 1


def test_the_figures_move_when_a_real_session_starts_and_stops(live_platform, tmp_path, scrape):
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, name="measured", author=maintainer, cpus=1, memory_mb=1024)
    before = scrape()
    member = Browser(live_platform, maintainer)

    member.post_form(f"/studios/{studio.pk}/start/")
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    running = scrape()
    assert figure(running, "studios_studios", status="running", template="jupyterlab") == 1
    assert figure(running, "studios_studios", status="stopped", template="jupyterlab") == 0
    assert figure(running, "studios_start_seconds_count") == figure(before, "studios_start_seconds_count") + 1
    assert figure(running, "studios_start_seconds_sum") > figure(before, "studios_start_seconds_sum")
    assert member.session(studio).http.get("/api/status").status_code == 200
    proxied = scrape()
    assert figure(proxied, "studios_proxy_requests_total", status="2xx") > figure(
        running, "studios_proxy_requests_total", status="2xx"
    )
    assert figure(proxied, "studios_proxy_response_seconds_count") > figure(
        running, "studios_proxy_response_seconds_count"
    )

    member.post_form(f"/studios/{studio.pk}/stop/")
    wait_for_status(studio, StudioStatus.STOPPED, timeout=60)
    stopped = wait_until(
        lambda: (
            (samples := scrape())[("studios_stop_seconds_count", ())] > figure(before, "studios_stop_seconds_count")
            and samples
        ),
        10,
        "the stop to be counted",
    )
    assert figure(stopped, "studios_studios", status="stopped", template="jupyterlab") == 1
    assert figure(stopped, "studios_studios", status="running", template="jupyterlab") == 0
    assert figure(stopped, "studios_checkpoint_bytes_count") > figure(before, "studios_checkpoint_bytes_count")
    assert figure(stopped, "studios_checkpoint_seconds_count") > figure(before, "studios_checkpoint_seconds_count")
