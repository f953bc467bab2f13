"""Compute environments: admins add and edit them; their status follows what the provider reports.

A compute environment is checked by a task (``tasks.check_compute_environment``) when it is saved and then
periodically (a Celery beat task): a request never waits for a provider. Until the check answers, it is
``checking``; a problem makes it ``invalid`` with the provider's reason, and studios cannot start on it until a
later check finds it fixed.
"""

import logging

from django.db import IntegrityError, transaction

from . import lifecycle, permissions
from .exceptions import ActionRefused
from .models import ComputeEnvironment

log = logging.getLogger(__name__)


def save_environment(user, workspace, environment, kind):
    """Save a compute environment of ``workspace`` of ``kind`` (AWS Batch or Slurm; new or edited, credentials
    already applied) and queue its check."""
    permissions.require_role(user, workspace, permissions.ADMIN, "manage compute environments")
    environment.workspace = workspace
    environment.kind = kind
    try:
        with transaction.atomic():
            save_and_check(environment)
    except IntegrityError:
        raise ActionRefused(
            f"A compute environment named {environment.name!r} already exists in this workspace."
        ) from None
    log.info("compute environment %s (%s) saved by %s", environment.pk, environment.name, user)
    return environment


def save_and_check(environment):
    """Save the compute environment as ``checking`` and queue its check once the save is committed."""
    environment.status, environment.status_reason = ComputeEnvironment.Status.CHECKING, ""
    environment.save()
    transaction.on_commit(lambda: lifecycle.dispatch(lifecycle.CHECK_COMPUTE_ENVIRONMENT, environment.pk))
