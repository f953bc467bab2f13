"""The API's role matrix: every endpoint for every role, a non-member, an anonymous request and revoked and expired
tokens and an inactive user's, from the role table the pages use (``permissions``, ``Role.rank``, as tests/test_permissions.py)."""

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.urls import get_resolver
from django.utils import timezone

from checkpoints.models import Checkpoint
from studios import permissions, tokens
from studios.api import urls as api_urls
from studios.models import AccessToken, Role, Studio, StudioStatus

from .api import TokenClient
from .factories import make_running, make_studio

API = "/api/v1"
PRINCIPALS = [*Role.values, "outsider", "anonymous", "revoked token", "expired token", "inactive owner"]


@dataclass(frozen=True)
class Endpoint:
    """One method on one URL: the lowest role allowed (None: any user), what it answers when allowed, how to put
    the studio in the status it acts on, and what it changed (checked unchanged when refused)."""

    name: str
    method: str
    path: str
    lowest: str | None
    allowed: int
    body: dict | None = None
    status: str = StudioStatus.STOPPED
    outcome: object = field(default=None)  # (studio, checkpoint) -> a value that differs once the action is done


def studio_state(studio, checkpoint):
    row = Studio.objects.filter(pk=studio.pk).values("status", "name", "cpus").first()
    return row and tuple(row.values())


def checkpoint_name(studio, checkpoint):
    return Checkpoint.objects.get(pk=checkpoint.pk).name


def stop_time(studio, checkpoint):
    return Studio.objects.filter(pk=studio.pk).values_list("session__stops_at", flat=True).first()


def studio_count(studio, checkpoint):
    return Studio.objects.count()


WORKSPACE = f"{API}/workspaces/{{org}}/{{workspace}}"
ENDPOINTS = [
    Endpoint("listWorkspaces", "GET", f"{API}/workspaces/", None, 200),
    Endpoint("describeWorkspace", "GET", f"{WORKSPACE}/", permissions.VIEW, 200),
    Endpoint("listStudios", "GET", f"{WORKSPACE}/studios/", permissions.VIEW, 200),
    Endpoint(
        "addStudio",
        "POST",
        f"{WORKSPACE}/studios/",
        permissions.MAINTAIN,
        201,
        {"name": "new-one", "computeEnvironment": "{environment}"},
        outcome=studio_count,
    ),
    Endpoint("listTemplates", "GET", f"{WORKSPACE}/templates/", permissions.MAINTAIN, 200),
    Endpoint("listComputeEnvironments", "GET", f"{WORKSPACE}/compute-environments/", permissions.MAINTAIN, 200),
    Endpoint("listDatasets", "GET", f"{WORKSPACE}/datasets/", permissions.MAINTAIN, 200),
    Endpoint("describeStudio", "GET", f"{API}/studios/{{studio}}/", permissions.VIEW, 200),
    Endpoint(
        "changeStudio",
        "PATCH",
        f"{API}/studios/{{studio}}/",
        permissions.MAINTAIN,
        200,
        {"cpus": 4},
        outcome=studio_state,
    ),
    Endpoint("deleteStudio", "DELETE", f"{API}/studios/{{studio}}/", permissions.MAINTAIN, 204, outcome=studio_state),
    Endpoint(
        "startStudio", "POST", f"{API}/studios/{{studio}}/start/", permissions.MAINTAIN, 202, outcome=studio_state
    ),
    Endpoint(
        "stopStudio",
        "POST",
        f"{API}/studios/{{studio}}/stop/",
        permissions.MAINTAIN,
        202,
        status=StudioStatus.RUNNING,
        outcome=studio_state,
    ),
    Endpoint(
        "extendStudio",
        "POST",
        f"{API}/studios/{{studio}}/extend/",
        permissions.MAINTAIN,
        200,
        {"hours": 2},
        status=StudioStatus.RUNNING,
        outcome=stop_time,
    ),
    Endpoint(
        "forceStopStudio",
        "POST",
        f"{API}/studios/{{studio}}/force-stop/",
        permissions.MAINTAIN,
        202,
        status=StudioStatus.STOPPING,
    ),
    Endpoint("listCheckpoints", "GET", f"{API}/studios/{{studio}}/checkpoints/", permissions.VIEW, 200),
    Endpoint(
        "renameCheckpoint",
        "PATCH",
        f"{API}/checkpoints/{{checkpoint}}/",
        permissions.MAINTAIN,
        200,
        {"name": "renamed"},
        outcome=checkpoint_name,
    ),
    Endpoint(
        "startAsNew",
        "POST",
        f"{API}/checkpoints/{{checkpoint}}/start-as-new/",
        permissions.MAINTAIN,
        201,
        {"name": "clone"},
        outcome=studio_count,
    ),
    Endpoint(
        "addAsNew",
        "POST",
        f"{API}/checkpoints/{{checkpoint}}/add-as-new/",
        permissions.MAINTAIN,
        201,
        {"name": "clone"},
        outcome=studio_count,
    ),
]


def expected(principal, endpoint):
    """What ``principal`` gets from ``endpoint``: its success status, 401, 403 or 404."""
    if principal in ("anonymous", "revoked token", "expired token", "inactive owner"):
        return 401
    if endpoint.lowest is None:
        return endpoint.allowed
    if principal == "outsider":
        return 404
    return endpoint.allowed if Role.rank(principal) >= Role.rank(endpoint.lowest) else 403


def client_for(principal, members):
    if principal == "anonymous":
        return TokenClient()
    user = members[Role.OWNER] if principal not in members else members[principal]
    token, secret = tokens.issue_token(user, principal)
    if principal == "revoked token":
        tokens.revoke_token(user, token.pk)
    elif principal == "expired token":
        AccessToken.objects.filter(pk=token.pk).update(expires=timezone.now() - timedelta(seconds=1))
    elif principal == "inactive owner":
        user.is_active = False
        user.save()
    return TokenClient(secret)


def fill(value, names):
    if isinstance(value, str):
        return int(value.format(**names)) if value == "{environment}" else value.format(**names)
    if isinstance(value, dict):
        return {key: fill(item, names) for key, item in value.items()}
    return value


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda endpoint: endpoint.name)
def test_api_role_matrix(workspace, members, endpoint, principal):
    studio = make_studio(workspace, name="rnaseq", author=members[Role.OWNER])
    checkpoint = Checkpoint.objects.create(studio=studio, name="rnaseq_1", state="finalized", manifest_key="m")
    if endpoint.status != StudioStatus.STOPPED:
        make_running(studio, status=endpoint.status)
        # A stop that has taken long enough to be forced.
        Studio.objects.filter(pk=studio.pk).update(status_changed=timezone.now() - timedelta(hours=1))
    names = {
        "org": workspace.organization.slug,
        "workspace": workspace.slug,
        "studio": studio.pk,
        "checkpoint": checkpoint.pk,
        "environment": workspace.compute_environments.get().pk,
    }
    before = endpoint.outcome(studio, checkpoint) if endpoint.outcome else None
    response = client_for(principal, members).request(
        endpoint.method, fill(endpoint.path, names), fill(endpoint.body, names)
    )
    status = expected(principal, endpoint)
    assert response.status_code == status, response.content
    if status >= 400:
        code = {401: ("not_authenticated", "authentication_failed"), 403: ("role_required",), 404: ("not_found",)}
        assert response.json()["code"] in code[status]
        if status == 403:
            assert response.json()["detail"].startswith(f"You need the {endpoint.lowest} role or higher to ")
    if endpoint.outcome:
        changed = endpoint.outcome(studio, checkpoint) != before
        assert changed == (status < 400)


def test_an_outsider_lists_no_workspace(members):
    assert client_for("outsider", members).get(f"{API}/workspaces/").json() == []


def test_the_matrix_covers_every_endpoint():
    """A new endpoint must join ENDPOINTS (the schema and the docs are the framework's, public by design)."""
    methods = set()
    for pattern in api_urls.urlpatterns:
        if pattern.name in ("api_schema", "api_docs"):
            continue
        view = pattern.callback.view_class
        methods |= {
            (pattern.name, method.upper())
            for method in view.http_method_names
            if hasattr(view, method) and method not in ("options",)
        }
    resolver = get_resolver()
    covered = set()
    for endpoint in ENDPOINTS:
        path = endpoint.path.format(org="o", workspace="w", studio=1, checkpoint=1)
        covered.add((resolver.resolve(path).url_name, endpoint.method))
    assert covered == methods
