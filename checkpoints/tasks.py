"""Checkpoint cleanup: asynchronous, best effort, retried with backoff, failures recorded on the store."""

import logging
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from studios.models import ComputeEnvironment

from .cleanup import sweep
from .models import CheckpointStore

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 6 * 60 * 60


@shared_task(bind=True, max_retries=None)
def clean_store(self, work_dir, deleted_prefix=""):
    """``deleted_prefix``: the manifest folder of a studio just deleted (when the broker is down, the hourly sweep
    of every store removes it after the grace period)."""
    store, _ = CheckpointStore.objects.get_or_create(work_dir=work_dir)
    try:
        removed = sweep(work_dir, deleted_prefix)
    except Exception as error:
        delay = min(60 * 2**store.failures, MAX_BACKOFF_SECONDS)
        CheckpointStore.objects.filter(pk=store.pk).update(
            failures=store.failures + 1,
            last_error=f"{type(error).__name__}: {error}",
            next_attempt=timezone.now() + timedelta(seconds=delay),
        )
        log.warning("cleanup of %s failed (%s); retrying in %s s", work_dir, error, delay)
        raise self.retry(exc=error, countdown=delay) from error
    CheckpointStore.objects.filter(pk=store.pk).update(
        failures=0, last_error="", next_attempt=None, last_cleanup=timezone.now(), removed_objects=removed
    )
    log.info("cleanup of %s removed %d objects", work_dir, removed)
    return removed


@shared_task
def clean_all_stores():
    for work_dir in ComputeEnvironment.objects.values_list("work_dir", flat=True).distinct():
        clean_store.delay(work_dir)
