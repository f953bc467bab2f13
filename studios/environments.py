"""Compute environments: admins add and edit them; their status follows what the provider reports.

A compute environment is checked when it is saved and then periodically (a Celery beat task); a
problem makes it ``invalid`` with the provider's reason, and studios cannot start on it until a
later check finds it fixed.
"""

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import permissions
from .backends import BackendError, backend_for
from .exceptions import ActionRefused
from .models import ComputeEnvironment

log = logging.getLogger(__name__)


def save_batch_environment(user, workspace, environment):
    """Save an AWS Batch compute environment of ``workspace`` (new or edited, credentials already applied)
    and check it at once, so that the admin sees whether studios can start on it."""
    permissions.require_role(user, workspace, permissions.ADMIN, "manage compute environments")
    environment.workspace = workspace
    environment.kind = ComputeEnvironment.Kind.AWS_BATCH
    try:
        with transaction.atomic():
            environment.save()
    except IntegrityError:
        raise ActionRefused(
            f"A compute environment named {environment.name!r} already exists in this workspace."
        ) from None
    log.info("compute environment %s (%s) saved by %s", environment.pk, environment.name, user)
    return check_environment(environment.pk)


def check_environment(environment_id):
    """Ask the backend whether sessions can start on the compute environment and record the answer."""
    environment = ComputeEnvironment.objects.get(pk=environment_id)
    try:
        problem = backend_for(environment).environment_problem()
    except BackendError as error:
        problem = str(error)
    status = ComputeEnvironment.Status.INVALID if problem else ComputeEnvironment.Status.AVAILABLE
    if (status, problem) != (environment.status, environment.status_reason):
        log.log(
            logging.WARNING if problem else logging.INFO,
            "compute environment %s (%s) is now %s%s", environment.pk, environment.name, status, f": {problem}" if problem else "",
        )  # fmt: skip
    ComputeEnvironment.objects.filter(pk=environment_id).update(
        status=status, status_reason=problem, status_checked=timezone.now()
    )
    environment.refresh_from_db()
    return environment
