"""Removing checkpoint content that no remaining checkpoint references: mark and sweep, per store.

Live content is everything the manifests of the remaining checkpoint records (all studios,
clones included, whose compute environment uses this work directory) point to. Content
younger than a grace period is never removed, so that a checkpoint being written now, not yet
recorded, is safe. If any live manifest cannot be read, nothing is removed.
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from . import snapshot
from .models import Checkpoint
from .store import store_for


class CleanupError(Exception):
    pass


def live_content(work_dir, store):
    manifests, objects = set(), set()
    records = Checkpoint.objects.filter(studio__compute_environment__work_dir=work_dir).exclude(manifest_key="")
    for key, digest in records.values_list("manifest_key", "manifest_sha256").distinct():
        try:
            manifest = snapshot.load_manifest(store, key, digest)
        except snapshot.CorruptCheckpoint as error:
            raise CleanupError(f"a live checkpoint cannot be read ({error}); removing nothing") from None
        manifests.add(key)
        objects |= snapshot.referenced_objects(manifest)
    return manifests, objects


def sweep(work_dir, deleted_prefix=""):
    """Remove unreferenced manifests and chunks older than the grace period; return how many. The unreferenced
    manifests of a deleted studio (under ``deleted_prefix``) go at once: no session of it can be writing one."""
    store = store_for(work_dir)
    live_manifests, live_objects = live_content(work_dir, store)
    cutoff = timezone.now() - timedelta(seconds=settings.STUDIOS_CHECKPOINT_GC_GRACE_SECONDS)
    deleted = f"{snapshot.MANIFESTS}{deleted_prefix}/" if deleted_prefix else None
    removed = 0
    for prefix, live in ((snapshot.MANIFESTS, live_manifests), (snapshot.OBJECTS, live_objects)):
        for key, modified in list(store.listing(prefix)):
            if key not in live and (modified < cutoff or (deleted and key.startswith(deleted))):
                store.delete(key)
                removed += 1
    return removed
