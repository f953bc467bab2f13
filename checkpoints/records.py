"""Checkpoint records: naming, what a start restores, what a session reports, renames and clones."""

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from studios import permissions
from studios.models import Studio

from .models import Checkpoint, clean_checkpoint_name

log = logging.getLogger(__name__)


def new_session_checkpoint(studio):
    """The record a new session saves into: ``<studio name>_<n>``, n counting the studio's own checkpoints (a
    clone's inherited ones are the parent's)."""
    n = studio.checkpoints.filter(copied_from=None).count() + 1
    while studio.checkpoints.filter(name=f"{studio.name}_{n}").exists():
        n += 1
    return Checkpoint.objects.create(studio=studio, name=clean_checkpoint_name(f"{studio.name}_{n}"))


def restore_source(studio):
    """What a start restores: the newest checkpoint the studio's own sessions saved, else the clone's source."""
    return restore_sources([studio])[studio.pk]


def restore_sources(studios):
    """``restore_source`` of each of ``studios`` ({studio id: checkpoint or None}) in two queries, however many
    there are (a list of studios shows each one's). Each checkpoint comes with its studio and that one's session."""
    newest = (
        Checkpoint.objects.filter(
            studio=OuterRef("pk"),
            copied_from__isnull=True,
            state__in=[Checkpoint.State.INTERIM, Checkpoint.State.FINALIZED],
        )
        .exclude(manifest_key="")
        .order_by("-saved", "-pk")
    )
    own = dict(
        Studio.objects.filter(pk__in=[studio.pk for studio in studios])
        .annotate(newest=Subquery(newest.values("pk")[:1]))
        .values_list("pk", "newest")
    )
    wanted = {own.get(studio.pk) or studio.parent_checkpoint_id for studio in studios} - {None}
    checkpoints = Checkpoint.objects.select_related("studio__session").in_bulk(wanted) if wanted else {}
    sources = {}
    for studio in studios:
        source = checkpoints.get(own.get(studio.pk) or studio.parent_checkpoint_id)
        sources[studio.pk] = source if source is not None and source.restorable else None
    return sources


def record_saved(checkpoint_id, manifest_key, manifest_sha256, size_bytes, final):
    """A complete version of a checkpoint was written: point the record at it."""
    state = Checkpoint.State.FINALIZED if final else Checkpoint.State.INTERIM
    updated = (
        Checkpoint.objects.filter(pk=checkpoint_id)
        .exclude(state=Checkpoint.State.INVALID)
        .update(
            manifest_key=manifest_key,
            manifest_sha256=manifest_sha256,
            size_bytes=size_bytes,
            state=state,
            saved=timezone.now(),
        )
    )
    return bool(updated)


def mark_invalid(checkpoint, reason):
    Checkpoint.objects.filter(pk=checkpoint.pk).update(state=Checkpoint.State.INVALID, invalid_reason=reason)
    log.warning("checkpoint %s marked invalid: %s", checkpoint.pk, reason)


def rename_checkpoint(user, checkpoint, name):
    """Rename within the studio; raises ValidationError with the reason for a bad or taken name."""
    permissions.require_role(user, checkpoint.studio.workspace, permissions.MAINTAIN, "rename checkpoints")
    name = clean_checkpoint_name(name)
    try:
        with transaction.atomic():
            Checkpoint.objects.filter(pk=checkpoint.pk).update(name=name)
    except IntegrityError:
        raise ValidationError(f"{checkpoint.studio.name} already has a checkpoint named {name}.") from None
    return name


def copy_history(parent, clone, source):
    """Give ``clone`` the parent's checkpoint history, sharing the stored content; return the copy of ``source``."""
    copies = {}
    for checkpoint in parent.checkpoints.filter(state__in=[Checkpoint.State.INTERIM, Checkpoint.State.FINALIZED]):
        copies[checkpoint.pk] = Checkpoint.objects.create(
            studio=clone,
            name=checkpoint.name,
            state=checkpoint.state,
            saved=checkpoint.saved,
            size_bytes=checkpoint.size_bytes,
            manifest_key=checkpoint.manifest_key,
            manifest_sha256=checkpoint.manifest_sha256,
            copied_from=checkpoint,
        )
    # Created is when the parent's session made it, not when it was copied (``auto_now_add`` sets the copy time).
    for checkpoint in parent.checkpoints.filter(pk__in=copies):
        Checkpoint.objects.filter(pk=copies[checkpoint.pk].pk).update(created=checkpoint.created)
    return copies[source.pk]
