"""The API under /api/v1/: what each endpoint answers and changes, and its refusals, with the pages' sentences."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from checkpoints.models import Checkpoint
from studios.models import ActiveMount, ComputeEnvironment, Role, SessionConnection, Studio, StudioStatus

from .api import TokenClient, token_client
from .factories import make_dataset, make_member, make_running, make_studio

API = "/api/v1"


@pytest.fixture
def maintainer(workspace):
    return make_member(workspace, Role.MAINTAIN, username="mia")


@pytest.fixture
def api(maintainer):
    return token_client(maintainer)


@pytest.fixture
def studios_url(workspace):
    return f"{API}/workspaces/{workspace.organization.slug}/{workspace.slug}/studios/"


@pytest.fixture
def studio(workspace, maintainer):
    return make_studio(workspace, name="rnaseq", author=maintainer)


def environment_of(workspace):
    return workspace.compute_environments.get(name="local")


def test_workspaces_lists_mine_with_my_role(api, workspace):
    response = api.get(f"{API}/workspaces/")
    assert response.status_code == 200
    assert response.json() == [
        {
            "organization": workspace.organization.slug,
            "slug": workspace.slug,
            "name": workspace.name,
            "organizationName": workspace.organization.name,
            "role": "maintain",
            "maxRunningStudios": None,
            "defaultLifespanHours": 8,
            "idleStopMinutes": None,
        }
    ]


def test_adding_a_studio_answers_its_representation(api, studios_url, workspace):
    response = api.post(studios_url, {"name": "qc", "computeEnvironment": environment_of(workspace).pk})
    assert response.status_code == 201, response.json()
    studio = response.json()
    assert studio["name"] == "qc" and studio["status"] == "stopped" and studio["author"] == "mia"
    assert studio["cpus"] == 2 and studio["memoryMb"] == 8192 and studio["template"] == "jupyterlab"
    assert studio["actions"] == ["start", "delete"] and studio["sessionUrl"] is None
    assert Studio.objects.get(name="qc").workspace == workspace


def test_adding_with_auto_start_starts_it(api, studios_url, workspace):
    response = api.post(
        studios_url, {"name": "qc", "computeEnvironment": environment_of(workspace).pk, "autoStart": True}
    )
    assert response.status_code == 201
    assert response.json()["status"] == "starting"
    assert response.json()["startupSteps"][0]["state"] == "in-progress"


def test_an_auto_start_refused_adds_nothing(api, studios_url, workspace):
    environment = environment_of(workspace)
    ComputeEnvironment.objects.filter(pk=environment.pk).update(status="invalid", status_reason="The disk is gone.")
    response = api.post(studios_url, {"name": "qc", "computeEnvironment": environment.pk, "autoStart": True})
    assert response.status_code == 409
    assert response.json() == {
        "code": "refused",
        "detail": "Compute environment local is invalid: The disk is gone. Ask an admin of the workspace to fix it.",
    }
    assert not Studio.objects.filter(name="qc").exists()


@pytest.mark.parametrize(
    "body, field, sentence",
    [
        ({"cpus": 64}, "cpus", "local offers 1 to 8 CPUs."),
        ({"memoryMb": 10}, "memoryMb", "local offers 512 to 65536 MB of memory."),
        ({"name": "rnaseq"}, "name", "A studio named 'rnaseq' already exists in this workspace."),
        ({"name": ""}, "name", "This field is required."),
        ({"template": "emacs"}, "template", "Select a valid choice. emacs is not one of the available choices."),
        ({"cpus": "many"}, "cpus", "Enter a whole number."),
        ({"datasets": [999]}, "datasets", "Select a valid choice. 999 is not one of the available choices."),
        ({"autoStart": "yes"}, "autoStart", "autoStart is true or false."),
        ({"colour": "red"}, "colour", "Unknown field; this request takes name, description, template, "),
    ],
)
def test_adding_refuses_bad_input_with_the_forms_sentence(api, studios_url, workspace, studio, body, field, sentence):
    response = api.post(studios_url, {"name": "qc", "computeEnvironment": environment_of(workspace).pk, **body})
    assert response.status_code == 400
    answer = response.json()
    assert answer["code"] == "invalid"
    assert answer["errors"][field][0].startswith(sentence)
    assert sentence in answer["detail"]
    assert not Studio.objects.filter(name="qc").exists()


@pytest.mark.parametrize(
    "body",
    [
        {"computeEnvironment": {"id": 1}},
        {"computeEnvironment": None},
        {"datasets": [{"id": 1}]},
        {"datasets": "reads"},
        {"cpus": True},
        {"cpus": 1e30},
        {"memoryMb": [1]},
        {"name": None},
    ],
)
def test_adding_refuses_malformed_values_without_failing(api, studios_url, workspace, body):
    response = api.post(studios_url, {"name": "qc", "computeEnvironment": environment_of(workspace).pk, **body})
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert not Studio.objects.exists()


def test_a_template_that_cannot_run_there_is_refused_with_the_reason(api, studios_url, workspace):
    environment = environment_of(workspace)
    ComputeEnvironment.objects.filter(pk=environment.pk).update(template_problems={"rstudio": "No image for it."})
    response = api.post(studios_url, {"name": "qc", "template": "rstudio", "computeEnvironment": environment.pk})
    assert response.status_code == 400
    assert response.json()["errors"]["template"] == ["RStudio Server cannot run on local. No image for it."]


def test_a_body_that_is_not_an_object_is_refused(api, studios_url):
    assert api.post(studios_url, ["qc"]).json() == {
        "code": "invalid",
        "detail": "Send a JSON object.",
        "errors": {"": ["Send a JSON object."]},
    }
    response = api.client.post(studios_url, "{not json", content_type="application/json", headers=api.headers)
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def test_listing_searches_as_the_page_and_pages(api, studios_url, workspace, maintainer):
    other = make_member(workspace, Role.MAINTAIN, username="olaf")
    for name in ["rnaseq-a", "rnaseq-b", "variant"]:
        make_studio(workspace, name=name, author=maintainer)
    make_studio(workspace, name="rnaseq-olaf", author=other, status=StudioStatus.ERRORED)
    page = api.get(studios_url + "?search=rnaseq&max=2&offset=1").json()
    assert page["total"] == 3 and page["max"] == 2 and page["offset"] == 1
    assert [studio["name"] for studio in page["studios"]] == ["rnaseq-b", "rnaseq-a"]  # newest first
    assert [s["name"] for s in api.get(studios_url + "?search=rnaseq%20author:olaf").json()["studios"]] == [
        "rnaseq-olaf"
    ]
    assert api.get(studios_url + "?search=status:errored").json()["total"] == 1
    assert api.get(studios_url).json()["total"] == 4


@pytest.mark.parametrize(
    "order, expected",
    [
        ("", ["variant", "rnaseq-b", "rnaseq-a"]),
        ("newest", ["variant", "rnaseq-b", "rnaseq-a"]),
        ("oldest", ["rnaseq-a", "rnaseq-b", "variant"]),
        ("name", ["rnaseq-a", "rnaseq-b", "variant"]),
        ("lastUsed", ["rnaseq-a", "variant", "rnaseq-b"]),
    ],
)
def test_listing_orders_as_the_page(api, studios_url, workspace, maintainer, client, order, expected):
    for name in ["rnaseq-a", "rnaseq-b", "variant"]:
        make_studio(workspace, name=name, author=maintainer)
    Studio.objects.filter(name="rnaseq-a").update(last_activity=timezone.now())
    answer = api.get(studios_url + (f"?orderBy={order}" if order else "")).json()
    assert [studio["name"] for studio in answer["studios"]] == expected
    client.force_login(maintainer)
    page = client.get(workspace.get_absolute_url(), {"order": order} if order else {})
    assert [studio.name for studio in page.context["studios"]] == expected


def test_listing_refuses_an_unknown_order_with_the_allowed_ones(api, studios_url, workspace, maintainer):
    make_studio(workspace, name="rnaseq", author=maintainer)
    response = api.get(studios_url + "?orderBy=-created")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert response.json()["errors"] == {
        "orderBy": ["Unknown ordering '-created'; order by newest, oldest, name, lastUsed."]
    }


def test_listing_takes_as_many_queries_for_many_studios_as_for_few(api, studios_url, workspace, maintainer):
    """Each studio shows its last checkpoint, its members and mounts: read for the whole page at once."""
    reads = make_dataset(workspace)

    def add_studios(count):
        for _ in range(count):
            studio = make_studio(workspace, author=maintainer, datasets=[reads])
            saved = Checkpoint.objects.create(studio=studio, name="saved", state="finalized", manifest_key="m")
            clone = make_studio(workspace, author=maintainer, parent_checkpoint=saved)
            make_running(clone, checkpoint=Checkpoint.objects.create(studio=clone, name="first"))
            SessionConnection.objects.create(studio=clone, user=maintainer, web_process="web-1")

    def queries_to_list():
        with CaptureQueriesContext(connection) as queries:
            answer = api.get(studios_url).json()
        assert all(studio["lastCheckpoint"]["name"] == "saved" for studio in answer["studios"])
        return answer["total"], len(queries)

    api.get(studios_url)  # the token's first use of the minute is recorded
    add_studios(2)
    few = queries_to_list()
    add_studios(20)
    many = queries_to_list()
    assert (few[0], many[0]) == (4, 44)
    assert many[1] == few[1]


@pytest.mark.parametrize(
    "query, field, sentence",
    [
        ("max=0", "max", "max is from 1 to 1000."),
        ("max=many", "max", "max and offset are whole numbers."),
        ("offset=-1", "offset", "offset is 0 or more."),
    ],
)
def test_listing_refuses_bad_bounds(api, studios_url, query, field, sentence):
    response = api.get(f"{studios_url}?{query}")
    assert response.status_code == 400
    assert response.json()["errors"] == {field: [sentence]}


def test_a_running_studio_shows_its_session_steps_checkpoint_and_members(workspace, studio):
    connect = make_member(workspace, Role.CONNECT, username="cora")
    viewer = make_member(workspace, Role.VIEW, username="vic")
    make_running(studio, steps=[{"name": "Starting JupyterLab", "state": "succeeded", "message": ""}])
    checkpoint = Checkpoint.objects.create(
        studio=studio, name="rnaseq_1", state="interim", manifest_key="m", saved="2026-01-01T00:00Z"
    )
    SessionConnection.objects.create(studio=studio, user=connect, web_process="web-1")
    answer = token_client(connect).get(f"{API}/studios/{studio.pk}/").json()
    assert answer["status"] == "running"
    assert answer["startupSteps"] == [{"name": "Starting JupyterLab", "state": "succeeded", "message": ""}]
    assert answer["lastCheckpoint"]["id"] == checkpoint.pk and answer["lastCheckpoint"]["name"] == "rnaseq_1"
    assert [member["username"] for member in answer["connectedMembers"]] == ["cora"]
    assert answer["sessionUrl"] == f"http://s{studio.pk}.localhost/"  # its own origin, the platform's scheme
    assert answer["actions"] == ["connect", "copy-url"] and answer["role"] == "connect"
    assert token_client(viewer).get(f"{API}/studios/{studio.pk}/").json()["sessionUrl"] is None


def test_starting_a_running_studio_says_so(api, studio):
    make_running(studio)
    response = api.post(f"{API}/studios/{studio.pk}/start/")
    assert response.status_code == 409
    assert response.json() == {
        "code": "refused",
        "detail": "rnaseq is running; only a stopped or errored studio can be started.",
    }


def test_starting_with_other_resources_changes_them(api, studio):
    response = api.post(f"{API}/studios/{studio.pk}/start/", {"cpus": 4, "memoryMb": 4096})
    assert response.status_code == 202
    studio.refresh_from_db()
    assert (studio.status, studio.cpus, studio.memory_mb) == (StudioStatus.STARTING, 4, 4096)


def test_starting_with_bad_resources_changes_nothing(api, studio):
    response = api.post(f"{API}/studios/{studio.pk}/start/", {"cpus": 99})
    assert response.status_code == 400
    assert response.json()["errors"] == {"cpus": ["local offers 1 to 8 CPUs."]}
    studio.refresh_from_db()
    assert (studio.status, studio.cpus) == (StudioStatus.STOPPED, 2)


def test_a_dataset_held_by_a_running_studio_cannot_be_mounted(api, workspace, studio, maintainer):
    reads = make_dataset(workspace)
    holder = make_running(make_studio(workspace, name="holder", author=maintainer))
    ActiveMount.objects.create(workspace=workspace, studio=holder, dataset=reads, data_path="/data/reads/")
    datasets = api.get(f"{API}/workspaces/{workspace.organization.slug}/{workspace.slug}/datasets/?studio={studio.pk}")
    assert datasets.json() == [
        {
            "id": reads.pk,
            "name": "reads",
            "uri": "/data/reads",
            "region": "",
            "mountable": False,
            "heldBy": {"id": holder.pk, "name": "holder"},
            "writable": False,
            "otherRegion": False,
        }
    ]
    response = api.post(f"{API}/studios/{studio.pk}/start/", {"datasets": [reads.pk]})
    assert response.status_code == 400
    assert response.json()["errors"] == {"datasets": ["reads is mounted by running studio holder."]}
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED


def test_changing_a_stopped_studio(api, studio, workspace):
    reads = make_dataset(workspace)
    response = api.patch(f"{API}/studios/{studio.pk}/", {"name": "rnaseq-2", "memoryMb": 4096, "datasets": [reads.pk]})
    assert response.status_code == 200, response.json()
    studio.refresh_from_db()
    assert (studio.name, studio.memory_mb, studio.cpus) == ("rnaseq-2", 4096, 2)
    assert list(studio.datasets.all()) == [reads]
    assert api.patch(f"{API}/studios/{studio.pk}/", {"description": "same name is fine"}).status_code == 200


def test_changing_a_running_studio_is_refused(api, studio):
    make_running(studio)
    response = api.patch(f"{API}/studios/{studio.pk}/", {"cpus": 4})
    assert response.status_code == 409
    assert response.json()["detail"] == "rnaseq is running; stop it before changing it."


def test_renaming_to_a_taken_name_is_refused(api, studio, workspace, maintainer):
    make_studio(workspace, name="other", author=maintainer)
    response = api.patch(f"{API}/studios/{studio.pk}/", {"name": "other"})
    assert response.status_code == 400
    assert response.json()["errors"] == {"name": ["A studio named 'other' already exists in this workspace."]}


def test_deleting_a_running_studio_is_refused(api, studio):
    make_running(studio)
    response = api.delete(f"{API}/studios/{studio.pk}/")
    assert response.status_code == 409 and response.json()["detail"] == "rnaseq is running; stop it before deleting it."


def test_stopping_a_stopped_studio_says_so(api, studio):
    response = api.post(f"{API}/studios/{studio.pk}/stop/")
    assert response.status_code == 409
    assert response.json()["detail"] == "rnaseq is stopped; only a starting or running studio can be stopped."


def test_force_stop_before_it_is_offered_is_refused(api, studio):
    make_running(studio, status=StudioStatus.STOPPING)
    response = api.post(f"{API}/studios/{studio.pk}/force-stop/")
    assert response.status_code == 409
    assert response.json()["detail"].startswith("rnaseq is still saving its final checkpoint")


def test_checkpoints_are_listed_and_renamed(api, studio):
    checkpoint = Checkpoint.objects.create(studio=studio, name="rnaseq_1", state="finalized", manifest_key="m")
    listed = api.get(f"{API}/studios/{studio.pk}/checkpoints/").json()
    assert [(c["id"], c["name"], c["inUse"], c["restorable"]) for c in listed] == [
        (checkpoint.pk, "rnaseq_1", False, True)
    ]
    response = api.patch(f"{API}/checkpoints/{checkpoint.pk}/", {"name": "before upgrade"})
    assert response.status_code == 200 and response.json()["name"] == "before_upgrade"
    response = api.patch(f"{API}/checkpoints/{checkpoint.pk}/", {"name": "a/b"})
    assert response.status_code == 400
    assert response.json()["detail"] == "A checkpoint name cannot contain / or \\."
    assert api.patch(f"{API}/checkpoints/{checkpoint.pk}/", {"name": 5}).status_code == 400
    checkpoint.refresh_from_db()
    assert checkpoint.name == "before_upgrade"


def test_starting_as_new_from_a_checkpoint(api, studio):
    checkpoint = Checkpoint.objects.create(studio=studio, name="rnaseq_1", state="finalized", manifest_key="m")
    response = api.post(f"{API}/checkpoints/{checkpoint.pk}/start-as-new/", {"name": "rnaseq-clone", "cpus": 4})
    assert response.status_code == 201, response.json()
    clone = response.json()
    assert clone["status"] == "starting" and clone["description"] == "" and clone["cpus"] == 4
    assert clone["parentCheckpoint"] is not None
    response = api.post(f"{API}/checkpoints/{checkpoint.pk}/start-as-new/", {"name": "rnaseq-clone"})
    assert response.status_code == 400
    assert response.json()["errors"] == {"name": ["A studio named 'rnaseq-clone' already exists in this workspace."]}


def test_adding_as_new_leaves_the_clone_stopped_until_a_start_restores_the_checkpoint(api, studio):
    checkpoint = Checkpoint.objects.create(studio=studio, name="rnaseq_1", state="finalized", manifest_key="m")
    response = api.post(f"{API}/checkpoints/{checkpoint.pk}/add-as-new/", {"name": "rnaseq-copy", "memoryMb": 4096})
    assert response.status_code == 201, response.json()
    copy = response.json()
    assert (copy["status"], copy["description"], copy["memoryMb"]) == ("stopped", "", 4096)
    assert copy["lastCheckpoint"]["name"] == "rnaseq_1" and copy["lastCheckpoint"]["inherited"]
    assert "start" in copy["actions"]
    assert api.post(f"{API}/studios/{copy['id']}/start/").status_code == 202
    assert Studio.objects.get(pk=copy["id"]).session.restored_from.copied_from == checkpoint


def test_starting_as_new_from_the_checkpoint_in_use_is_refused(api, studio):
    checkpoint = Checkpoint.objects.create(studio=studio, name="rnaseq_1", state="interim", manifest_key="m")
    make_running(studio, checkpoint=checkpoint)
    response = api.post(f"{API}/checkpoints/{checkpoint.pk}/start-as-new/", {"name": "clone"})
    assert response.status_code == 409
    assert response.json()["detail"].startswith("Checkpoint rnaseq_1 is in use by rnaseq's running session")
    assert not Studio.objects.filter(name="clone").exists()


def test_templates_and_compute_environments_say_where_each_can_run(api, workspace):
    environment = environment_of(workspace)
    ComputeEnvironment.objects.filter(pk=environment.pk).update(template_problems={"vscode": "No code-server."})
    base = f"{API}/workspaces/{workspace.organization.slug}/{workspace.slug}"
    templates = {t["template"]: t["computeEnvironments"] for t in api.get(f"{base}/templates/").json()}
    assert templates["jupyterlab"] == [{"id": environment.pk, "name": "local", "available": True, "reason": ""}]
    assert templates["vscode"][0]["reason"] == "VS Code cannot run on local. No code-server."
    environments = api.get(f"{base}/compute-environments/").json()
    assert [(e["name"], e["status"], e["maxCpus"]) for e in environments] == [("local", "available", 8)]


def test_unknown_things_are_404_with_a_code(api):
    response = api.get(f"{API}/studios/999999/")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "No such studio."}
    assert api.get(f"{API}/workspaces/nope/nothing/studios/").json()["code"] == "not_found"
    assert api.patch(f"{API}/checkpoints/999999/", {"name": "x"}).status_code == 404


def test_a_refused_token_is_answered_401_with_the_reason(db):
    response = TokenClient("stu_nothing").get(f"{API}/workspaces/")
    assert response.status_code == 401
    assert response.json() == {"code": "authentication_failed", "detail": "This access token is not valid."}
    assert response["WWW-Authenticate"] == 'Bearer realm="studios"'
    assert TokenClient().get(f"{API}/workspaces/").json()["code"] == "not_authenticated"


def test_a_logged_in_browser_uses_the_api_with_its_csrf_token(client, maintainer, studio):
    client.force_login(maintainer)
    assert client.get(f"{API}/studios/{studio.pk}/", headers={"Accept": "application/json"}).json()["name"] == "rnaseq"
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(maintainer)
    response = browser.post(f"{API}/studios/{studio.pk}/start/", headers={"Accept": "application/json"})
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED
