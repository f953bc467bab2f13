"""The studio list, its search and live part, the add form's validation, the admin and the demo data."""

import re

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from checkpoints.models import Checkpoint
from studios import lifecycle
from studios.models import ComputeEnvironment, Membership, Role, SessionConnection, Studio, StudioStatus

from .factories import make_dataset, make_member, make_running, make_studio


@pytest.fixture
def maintainer(workspace):
    return make_member(workspace, Role.MAINTAIN, username="mia")


@pytest.fixture
def listed(workspace, maintainer):
    """Three studios by two authors on two compute environments."""
    other_author = make_member(workspace, Role.MAINTAIN, username="olaf")
    gpu = ComputeEnvironment.objects.create(
        workspace=workspace, name="gpu-queue", kind="aws-batch", region="eu-west-1", work_dir="s3://b/w"
    )
    make_studio(workspace, name="rnaseq-deseq2", author=maintainer)
    make_studio(workspace, name="rnaseq-salmon", author=other_author, compute_environment_id=gpu.pk)
    make_studio(workspace, name="variant-calling", author=other_author, status=StudioStatus.RUNNING)


def names(response):
    return sorted(s.name for s in response.context["studios"])


@pytest.mark.parametrize(
    "query, expected",
    [
        ("", ["rnaseq-deseq2", "rnaseq-salmon", "variant-calling"]),
        ("rnaseq", ["rnaseq-deseq2", "rnaseq-salmon"]),
        ("RNASEQ salmon", ["rnaseq-salmon"]),
        ("author:olaf", ["rnaseq-salmon", "variant-calling"]),
        ("username:mia", ["rnaseq-deseq2"]),
        ("ce:gpu-queue", ["rnaseq-salmon"]),
        ("computeEnvName:local author:olaf", ["variant-calling"]),
        ("rnaseq author:olaf ce:gpu-queue", ["rnaseq-salmon"]),
        ("status:running", ["variant-calling"]),
        ("author:nobody", []),
        ('"unbalanced', []),
    ],
)
def test_search_by_name_author_and_compute_environment(client, workspace, maintainer, listed, query, expected):
    client.force_login(maintainer)
    response = client.get(workspace.get_absolute_url(), {"q": query})
    assert response.status_code == 200
    assert names(response) == expected


def test_list_shows_each_studios_columns(client, workspace, maintainer, listed):
    client.force_login(maintainer)
    page = client.get(workspace.get_absolute_url()).content.decode()
    for text in ("rnaseq-salmon", "gpu-queue", "AWS Batch", "eu-west-1", "JupyterLab", "olaf", "running", "stopped"):
        assert text in page


def test_pages_listen_for_changes_instead_of_polling(client, workspace, maintainer):
    """Status changes reach the pages over their socket (``test_consumers``): not even a starting studio's pages
    poll (they do only while their socket is down, ``tests/browser/test_live.py``)."""
    client.force_login(maintainer)
    studio = make_studio(workspace, author=maintainer, status=StudioStatus.STARTING)
    for url in (workspace.get_absolute_url(), studio.get_absolute_url()):
        page = client.get(url).content.decode()
        assert 'hx-trigger="every' not in page and 'ws-connect="/ws/' in page
    partial = client.get(studio.get_absolute_url(), HTTP_HX_REQUEST="true")
    assert b'id="studio-status"' in partial.content and b"<html" not in partial.content


def test_the_list_pages_keeping_the_search_and_the_order(client, workspace, maintainer):
    client.force_login(maintainer)
    for n in range(60):
        make_studio(workspace, name=f"rnaseq-{n:02}", author=maintainer)
    make_studio(workspace, name="variant-calling", author=maintainer)
    first = client.get(workspace.get_absolute_url(), {"q": "rnaseq", "order": "name"})
    assert [s.name for s in first.context["studios"]] == [f"rnaseq-{n:02}" for n in range(50)]
    page = first.content.decode()
    assert "1 to 50 of 60" in page and 'href="?q=rnaseq&amp;order=name&amp;page=2"' in page
    second = client.get(workspace.get_absolute_url(), {"q": "rnaseq", "order": "name", "page": 2})
    assert [s.name for s in second.context["studios"]] == [f"rnaseq-{n:02}" for n in range(50, 60)]
    assert 'href="?q=rnaseq&amp;order=name&amp;page=1"' in second.content.decode()
    assert '<option value="name" selected>' in second.content.decode()


@pytest.mark.parametrize("page, shown", [("99", "51 to 60 of 60"), ("0", "51 to 60 of 60"), ("many", "1 to 50 of 60")])
def test_a_page_out_of_range_shows_the_nearest_one(client, workspace, maintainer, page, shown):
    client.force_login(maintainer)
    for _ in range(60):
        make_studio(workspace, author=maintainer)
    response = client.get(workspace.get_absolute_url(), {"page": page})
    assert response.status_code == 200 and shown in response.content.decode()


def test_an_unknown_order_lists_newest_first(client, workspace, maintainer, listed):
    client.force_login(maintainer)
    response = client.get(workspace.get_absolute_url(), {"order": "-created"})
    assert [s.name for s in response.context["studios"]] == ["variant-calling", "rnaseq-salmon", "rnaseq-deseq2"]


def test_the_list_takes_as_many_queries_for_many_studios_as_for_few(client, workspace, maintainer):
    client.force_login(maintainer)

    def queries_to_list():
        with CaptureQueriesContext(connection) as queries:
            assert client.get(workspace.get_absolute_url()).status_code == 200
        return len(queries)

    for _ in range(3):
        make_running(make_studio(workspace, author=maintainer))
    few = queries_to_list()
    for _ in range(120):
        make_running(make_studio(workspace, author=maintainer))
    assert queries_to_list() == few


def test_the_live_part_refreshes_the_page_shown_only(client, workspace, maintainer):
    """What a page asks for when its socket opens or while it is down (its own address, htmx): the page shown."""
    client.force_login(maintainer)
    for n in range(60):
        make_studio(workspace, name=f"rnaseq-{n:02}", author=maintainer)
    Studio.objects.filter(name="rnaseq-00").update(status=StudioStatus.STARTING)
    url = workspace.get_absolute_url()
    assert b'hx-trigger="every' not in client.get(url, {"q": "rnaseq", "order": "name"}).content
    partial = client.get(url, {"q": "rnaseq", "order": "name", "page": 2}, HTTP_HX_REQUEST="true")
    assert b"<html" not in partial.content
    assert [studio.name for studio in partial.context["studios"]] == [f"rnaseq-{n:02}" for n in range(50, 60)]


def test_the_checkpoints_tab_pages(client, workspace, maintainer):
    client.force_login(maintainer)
    studio = make_studio(workspace, name="rnaseq", author=maintainer)
    for n in range(60):
        Checkpoint.objects.create(studio=studio, name=f"rnaseq_{n:02}", state="finalized", manifest_key="m")
    first = client.get(studio.get_absolute_url(), {"tab": "checkpoints"}).content.decode()
    assert first.count('name="name"') == 50 and "rnaseq_59" in first and "rnaseq_09" not in first
    assert 'href="?tab=checkpoints&amp;page=2"' in first
    second = client.get(studio.get_absolute_url(), {"tab": "checkpoints", "page": 2}).content.decode()
    assert second.count('name="name"') == 10 and "rnaseq_09" in second and "51 to 60 of 60" in second


class TestAddForm:
    @pytest.fixture
    def post(self, client, workspace, maintainer):
        client.force_login(maintainer)
        url = reverse("studio_add", args=[workspace.organization.slug, workspace.slug])
        environment = workspace.compute_environments.get(name="local")

        def post(**changes):
            form = {
                "name": "new",
                "template": "jupyterlab",
                "compute_environment": environment.pk,
                "cpus": 2,
                "memory_mb": 4096,
            }
            form.update(changes)
            return client.post(url, {k: v for k, v in form.items() if v is not None})

        return post

    def test_a_valid_studio_is_created_stopped_with_its_settings(self, post, workspace, maintainer):
        reads = make_dataset(workspace)
        response = post(name="fresh", description="QC", cpus=3, memory_mb=2048, datasets=[reads.pk])
        studio = Studio.objects.get(name="fresh")
        assert response["Location"] == studio.get_absolute_url()
        assert (studio.status, studio.cpus, studio.memory_mb, studio.author) == ("stopped", 3, 2048, maintainer)
        assert list(studio.datasets.all()) == [reads]

    def test_the_defaults_are_two_cpus_and_8192_mb(self, client, workspace, maintainer):
        client.force_login(maintainer)
        page = client.get(reverse("studio_add", args=[workspace.organization.slug, workspace.slug])).content.decode()
        assert 'name="cpus" value="2"' in page and 'name="memory_mb" value="8192"' in page

    @pytest.mark.parametrize(
        "changes, message",
        [
            ({"name": "taken"}, "A studio named &#x27;taken&#x27; already exists"),
            ({"name": ""}, "This field is required"),
            ({"cpus": 9}, "offers 1 to 8 CPUs"),
            ({"cpus": 0}, "greater than or equal to 1"),
            ({"memory_mb": 100}, "offers 512 to 65536 MB"),
            ({"memory_mb": "lots"}, "Enter a whole number"),
            ({"datasets": [999999]}, "Select a valid choice"),
            ({"template": "rstudio"}, "RStudio Server cannot run on local"),
            ({"template": "emacs"}, "Select a valid choice"),
            ({"compute_environment": 999999}, "Select a valid choice"),
        ],
    )
    def test_bad_input_is_explained_and_creates_nothing(self, post, workspace, changes, message):
        make_studio(workspace, name="taken")
        before = Studio.objects.count()
        response = post(**changes)
        assert response.status_code == 400
        assert message in response.content.decode()
        assert Studio.objects.count() == before

    def test_a_dataset_held_by_a_running_studio_is_shown_unavailable_and_refused(self, post, client, workspace):
        from studios import lifecycle

        reads = make_dataset(workspace)
        owner = make_member(workspace, Role.OWNER)
        holder = make_studio(workspace, name="holder", author=owner, datasets=[reads])
        lifecycle.start_studio(owner, holder)
        page = client.get(reverse("studio_add", args=[workspace.organization.slug, workspace.slug])).content.decode()
        assert "unavailable: mounted by holder" in page
        response = post(datasets=[reads.pk])
        assert response.status_code == 400
        assert "reads is mounted by running studio holder" in response.content.decode()
        assert not Studio.objects.filter(name="new").exists()

    def test_compute_environments_of_other_workspaces_are_not_offered(self, post):
        from .factories import make_workspace

        foreign = make_workspace().compute_environments.get()
        response = post(compute_environment=foreign.pk)
        assert response.status_code == 400
        assert not Studio.objects.filter(name="new").exists()


def test_start_with_changed_resources_is_validated(client, workspace, maintainer):
    client.force_login(maintainer)
    studio = make_studio(workspace, author=maintainer)
    response = client.post(reverse("studio_start", args=[studio.pk]), {"cpus": 99, "memory_mb": 1024}, follow=True)
    assert "offers 1 to 8 CPUs" in response.content.decode()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED
    client.post(reverse("studio_start", args=[studio.pk]), {"cpus": 4, "memory_mb": 1024})
    studio.refresh_from_db()
    assert (studio.status, studio.cpus, studio.memory_mb) == (StudioStatus.STARTING, 4, 1024)


def test_refused_actions_say_why(client, workspace, maintainer):
    client.force_login(maintainer)
    studio = make_studio(workspace, author=maintainer, name="idle")
    response = client.post(reverse("studio_stop", args=[studio.pk]), follow=True)
    assert "idle is stopped; only a starting or running studio can be stopped." in response.content.decode()


def test_operators_manage_every_model_in_the_admin(admin_client, workspace, maintainer):
    make_studio(workspace, author=maintainer)
    for model in (
        "organization",
        "workspace",
        "membership",
        "computeenvironment",
        "dataset",
        "studio",
        "activemount",
        "sessionconnection",
        "webprocess",
    ):
        assert admin_client.get(f"/admin/studios/{model}/").status_code == 200
        assert admin_client.get(f"/admin/studios/{model}/add/").status_code == 200
    assert admin_client.get("/admin/checkpoints/checkpoint/").status_code == 200
    studio = Studio.objects.get()
    session = make_running(studio, token="secret-session-token").session
    assert b"secret-session-token" not in admin_client.get(f"/admin/studios/studio/{studio.pk}/change/").content
    assert b"secret-session-token" not in admin_client.get(f"/admin/studios/session/{session.pk}/change/").content


def test_seed_demo_creates_one_user_per_role_with_the_printed_password(db, capsys):
    call_command("seed_demo")
    call_command("seed_demo")  # twice: it converges
    password = [line for line in capsys.readouterr().out.splitlines() if line.startswith("password: ")][-1].split(": ")[
        1
    ]
    for role in Role.values:
        user = get_user_model().objects.get(username=role)
        assert user.check_password(password)
        assert Membership.objects.get(user=user).role == role
    environment = ComputeEnvironment.objects.get()
    assert environment.kind == "local"
    assert environment.workspace.datasets.count() == 1
    # Three stopped studios to try, added once: one a member deleted is not made again.
    studios = environment.workspace.studios
    assert list(studios.values_list("name", "status", "author__username")) == [
        ("single-cell-umap", "stopped", "maintain"),
        ("variant-calling", "stopped", "maintain"),
        ("rnaseq-qc", "stopped", "maintain"),
    ]
    studios.get(name="variant-calling").delete()
    call_command("seed_demo")
    assert studios.count() == 2


ROW_ACTIONS = ("Connect", "Copy URL", "Start", "Stop", "Delete")


def offered(page, studio):
    """The actions in the list's menu for ``studio``."""
    row = page.split(f'href="{studio.get_absolute_url()}"')[1].split("</tr>")[0]
    return [action for action in ROW_ACTIONS if f">{action}</" in row]


@pytest.mark.parametrize(
    "role, on_running, on_stopped",
    [
        (Role.OWNER, ["Connect", "Copy URL", "Stop"], ["Start", "Delete"]),
        (Role.ADMIN, ["Connect", "Copy URL", "Stop"], ["Start", "Delete"]),
        (Role.MAINTAIN, ["Connect", "Copy URL", "Stop"], ["Start", "Delete"]),
        (Role.LAUNCH, ["Connect", "Copy URL"], []),
        (Role.CONNECT, ["Connect", "Copy URL"], []),
        (Role.VIEW, [], []),
    ],
)
def test_the_actions_menu_offers_only_what_the_role_and_status_allow(
    client, workspace, members, role, on_running, on_stopped
):
    running = make_running(make_studio(workspace, name="running-one"))
    stopped = make_studio(workspace, name="stopped-one")
    client.force_login(members[role])
    page = client.get(workspace.get_absolute_url()).content.decode()
    assert offered(page, running) == on_running
    assert offered(page, stopped) == on_stopped
    assert page.count('<details class="menu">') == bool(on_running) + bool(on_stopped)


def test_detail_tabs_show_configuration_checkpoints_and_activity(client, workspace, maintainer):
    studio = make_studio(workspace, name="tabbed", author=maintainer, cpus=3)
    client.force_login(maintainer)
    configuration = client.get(studio.get_absolute_url()).content.decode()
    assert 'aria-current="page">Configuration' in configuration and "<dd>3</dd>" in configuration

    checkpoints = client.get(studio.get_absolute_url(), {"tab": "checkpoints"}).content.decode()
    assert "No checkpoints yet: one is taken when the studio starts" in checkpoints
    Checkpoint.objects.create(studio=studio, name="tabbed_1", state="finalized", size_bytes=3 * 2**20)
    checkpoints = client.get(studio.get_absolute_url(), {"tab": "checkpoints"}).content.decode()
    assert "tabbed_1" in checkpoints and "3.0\xa0MB" in checkpoints and "Finalized" in checkpoints

    activity = client.get(studio.get_absolute_url(), {"tab": "activity"}).content.decode()
    assert "Nobody is connected" in activity and "Nothing yet." in activity
    lifecycle.start_studio(maintainer, studio)
    carol = make_member(workspace, Role.CONNECT, username="carol")
    SessionConnection.objects.create(studio=studio, user=carol, web_process="p")
    activity = client.get(studio.get_absolute_url(), {"tab": "activity"}).content.decode()
    assert "<strong>carol</strong>" in activity and "Started by mia with 3 CPUs" in activity


def test_the_forms_say_which_mounts_will_be_writable_and_warn_about_regions(client, workspace, maintainer):
    client.force_login(maintainer)
    environment = workspace.compute_environments.get()
    environment.region = "eu-west-1"
    environment.save()
    make_dataset(workspace, "scratch", "/data/scratch/mia")
    far = make_dataset(workspace, "reads", "/data/reads")
    far.region = "us-east-1"
    far.save()
    studio = make_studio(workspace, author=maintainer)
    for url in (studio.get_absolute_url(), reverse("studio_add", args=[workspace.organization.slug, workspace.slug])):
        page = " ".join(client.get(url).content.decode().split())
        assert 'scratch <span class="muted">/data/scratch/mia</span> <span class="small">read-write</span>' in page
        assert 'reads <span class="muted">/data/reads</span> <span class="small">read-only</span>' in page
        assert "in us-east-1, not eu-west-1 like local" in page


def test_home_says_what_each_role_may_do_and_that_launch_adds_nothing_to_connect_yet(client, workspace):
    pages = {}
    for role in (Role.LAUNCH, Role.CONNECT):
        client.force_login(make_member(workspace, role))
        pages[role] = client.get("/").content.decode()
        assert f"As {role} you may connect to running studios and copy their links" in pages[role]
    assert "launch adds nothing yet (starting studios needs maintain)" in pages[Role.LAUNCH]
    assert "launch adds nothing" not in pages[Role.CONNECT]


def test_pages_have_an_icon_and_favicon_ico_finds_it(client, workspace, maintainer):
    client.force_login(maintainer)
    page = client.get(workspace.get_absolute_url()).content.decode()
    icon = re.search(r'<link rel="icon" href="([^"]+)"', page)
    assert icon and finders.find(icon.group(1).removeprefix(settings.STATIC_URL))
    assert client.get("/favicon.ico")["Location"] == icon.group(1)
