"""Factory functions for the objects tests need."""

import itertools
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from studios import origins, tasks
from studios.models import (
    ComputeEnvironment,
    Dataset,
    Membership,
    Organization,
    Role,
    Session,
    SessionAccess,
    Studio,
    StudioStatus,
    Workspace,
)

_numbers = itertools.count(1)
PASSWORD = "correct horse battery"


def make_workspace(max_running_studios=None, work_dir="/tmp/studios-test-work"):
    n = next(_numbers)
    organization = Organization.objects.create(name=f"Org {n}", slug=f"org-{n}")
    workspace = Workspace.objects.create(
        organization=organization, name=f"Workspace {n}", slug=f"ws-{n}", max_running_studios=max_running_studios
    )
    local = ComputeEnvironment.objects.create(
        workspace=workspace, name="local", work_dir=work_dir, writable_data_paths=["/data/scratch"], max_cpus=8
    )
    tasks.check_compute_environment(local.pk)
    return workspace


def make_user(username=None):
    user = get_user_model().objects.create_user(username or f"user{next(_numbers)}", password=PASSWORD)
    return user


def make_member(workspace, role, username=None):
    user = make_user(username)
    Membership.objects.create(workspace=workspace, user=user, role=role)
    return user


def make_dataset(workspace, name="reads", uri="/data/reads"):
    return Dataset.objects.create(workspace=workspace, name=name, uri=uri)


def make_studio(workspace, name=None, author=None, **fields):
    author = author or make_member(workspace, Role.MAINTAIN)
    datasets = fields.pop("datasets", [])
    studio = Studio.objects.create(
        workspace=workspace,
        name=name or f"studio-{next(_numbers)}",
        author=author,
        compute_environment=workspace.compute_environments.get(name="local"),
        **fields,
    )
    studio.datasets.set(datasets)
    return studio


def make_running(studio, endpoint="http://127.0.0.1:9", token=None, status=StudioStatus.RUNNING, **session_fields):
    """Give ``studio`` a session at ``endpoint`` (a fake one by default) and the status ``status``, started now
    with the studio's lifespan."""
    session_fields.setdefault("stops_at", timezone.now() + timedelta(hours=studio.lifespan_hours))
    session = Session.objects.create(
        studio=studio,
        token=token or secrets.token_urlsafe(16),
        endpoint=endpoint,
        cpus=studio.cpus,
        memory_mb=studio.memory_mb,
        **session_fields,
    )
    Studio.objects.filter(pk=studio.pk).update(status=status, session=session)
    studio.refresh_from_db()
    return studio


def make_session_cookie(studio, user):
    """The cookie of ``studio``'s session origin for ``user``, as a ticket round trip leaves it in their browser."""
    access = SessionAccess.objects.create(
        key=secrets.token_urlsafe(32), studio=studio, user=user, login="made by a test", redeemed=timezone.now()
    )
    return origins.cookie_value(access.key)
