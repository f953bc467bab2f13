"""The role table of SPEC section 1, for every page and action, for every role and a non-member."""

import pytest
from django.urls import reverse

from studios.models import Role, Studio, StudioStatus

from .factories import make_running, make_studio

ROLES = [*Role.values, "outsider"]
MAINTAINERS = {Role.OWNER, Role.ADMIN, Role.MAINTAIN}


def expected(role, lowest):
    """What a user with ``role`` gets from something that needs ``lowest``: 200 (allowed), 403 or 404."""
    if role == "outsider":
        return 404
    return 200 if Role.rank(role) >= Role.rank(lowest) else 403


@pytest.fixture
def studio(workspace, members):
    return make_studio(workspace, name="rnaseq", author=members[Role.OWNER])


def login(client, user):
    client.force_login(user)
    return client


@pytest.mark.parametrize("role", ROLES)
def test_studio_list_needs_view_role(client, members, workspace, studio, role):
    response = login(client, members[role]).get(workspace.get_absolute_url())
    assert response.status_code == expected(role, Role.VIEW)
    if response.status_code == 200:
        assert b"rnaseq" in response.content


@pytest.mark.parametrize("role", ROLES)
def test_studio_detail_needs_view_role(client, members, studio, role):
    response = login(client, members[role]).get(studio.get_absolute_url())
    assert response.status_code == expected(role, Role.VIEW)


@pytest.mark.parametrize("role", ROLES)
def test_add_page_needs_maintain_role(client, members, workspace, role):
    url = reverse("studio_add", args=[workspace.organization.slug, workspace.slug])
    response = login(client, members[role]).get(url)
    assert response.status_code == expected(role, Role.MAINTAIN)
    if response.status_code == 403:
        assert b"You need the maintain role" in response.content


@pytest.mark.parametrize("role", ROLES)
def test_adding_a_studio_needs_maintain_role(client, members, workspace, role):
    url = reverse("studio_add", args=[workspace.organization.slug, workspace.slug])
    environment = workspace.compute_environments.get()
    response = login(client, members[role]).post(
        url,
        {
            "name": "new-one",
            "template": "jupyterlab",
            "compute_environment": environment.pk,
            "cpus": 2,
            "memory_mb": 4096,
        },
    )
    created = Studio.objects.filter(name="new-one").exists()
    if role in MAINTAINERS:
        assert response.status_code == 302 and created
    else:
        assert response.status_code == expected(role, Role.MAINTAIN) and not created


@pytest.mark.parametrize("role", ROLES)
def test_starting_needs_maintain_role(client, members, studio, role):
    response = login(client, members[role]).post(reverse("studio_start", args=[studio.pk]))
    studio.refresh_from_db()
    if role in MAINTAINERS:
        assert response.status_code == 302 and studio.status == StudioStatus.STARTING
    else:
        assert response.status_code == expected(role, Role.MAINTAIN)
        assert studio.status == StudioStatus.STOPPED


@pytest.mark.parametrize("role", ROLES)
def test_stopping_needs_maintain_role(client, members, studio, role):
    make_running(studio)
    response = login(client, members[role]).post(reverse("studio_stop", args=[studio.pk]))
    studio.refresh_from_db()
    if role in MAINTAINERS:
        assert response.status_code == 302 and studio.status == StudioStatus.STOPPING
    else:
        assert response.status_code == expected(role, Role.MAINTAIN)
        assert studio.status == StudioStatus.RUNNING


@pytest.mark.parametrize("role", ROLES)
def test_deleting_needs_maintain_role(client, members, studio, role):
    response = login(client, members[role]).post(reverse("studio_delete", args=[studio.pk]))
    exists = Studio.objects.filter(pk=studio.pk).exists()
    if role in MAINTAINERS:
        assert response.status_code == 302 and not exists
    else:
        assert response.status_code == expected(role, Role.MAINTAIN) and exists


@pytest.mark.parametrize("role", ROLES)
def test_action_buttons_follow_the_role(client, members, studio, role):
    response = login(client, members[role]).get(studio.get_absolute_url())
    if role == "outsider":
        assert response.status_code == 404
        return
    shows_start = reverse("studio_start", args=[studio.pk]).encode() in response.content
    assert shows_start == (role in MAINTAINERS)


def test_anonymous_user_is_sent_to_login(client, studio):
    response = client.get(studio.get_absolute_url())
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_unknown_studio_and_unknown_workspace_are_404(client, members):
    login(client, members[Role.OWNER])
    assert client.get("/studios/999999/").status_code == 404
    assert client.get("/w/nope/nothing/").status_code == 404
    assert client.post("/studios/999999/start/").status_code == 404


def test_actions_refuse_get_requests(client, members, studio):
    login(client, members[Role.OWNER])
    assert client.get(reverse("studio_start", args=[studio.pk])).status_code == 405
    studio.refresh_from_db()
    assert studio.status == StudioStatus.STOPPED


def test_home_lists_only_my_workspaces(client, members, workspace):
    from .factories import make_member, make_workspace

    other = make_workspace()
    make_member(other, Role.VIEW, username="elsewhere")
    response = login(client, members[Role.VIEW]).get("/")
    assert workspace.name.encode() in response.content
    assert other.name.encode() not in response.content


ADMINS = {Role.OWNER, Role.ADMIN}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", ["environment_list", "environment_add"])
def test_compute_environment_pages_need_admin_role(client, members, workspace, role, page):
    response = login(client, members[role]).get(reverse(page, args=[workspace.organization.slug, workspace.slug]))
    assert response.status_code == expected(role, Role.ADMIN)
    if response.status_code == 403:
        assert b"You need the admin role or higher to manage compute environments" in response.content


@pytest.mark.parametrize("role", ROLES)
def test_the_compute_environments_link_follows_the_role(client, members, workspace, role):
    response = login(client, members[role]).get(workspace.get_absolute_url())
    if role == "outsider":
        assert response.status_code == 404
        return
    link = reverse("environment_list", args=[workspace.organization.slug, workspace.slug]).encode()
    assert (link in response.content) == (role in ADMINS)


@pytest.mark.parametrize("role", ROLES)
def test_force_stopping_needs_maintain_role(
    client, members, studio, role, eager_tasks, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    make_running(studio, status=StudioStatus.STOPPING)
    Studio.objects.filter(pk=studio.pk).update(status_changed=timezone.now() - timedelta(minutes=11))
    page = login(client, members[role]).get(studio.get_absolute_url())
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("studio_force_stop", args=[studio.pk]))
    studio.refresh_from_db()
    if role in MAINTAINERS:
        assert b"Force stop" in page.content
        assert response.status_code == 302 and studio.status == StudioStatus.STOPPED
    else:
        assert b"Force stop" not in page.content
        assert response.status_code == expected(role, Role.MAINTAIN)
        assert studio.status == StudioStatus.STOPPING
