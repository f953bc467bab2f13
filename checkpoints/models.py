"""Checkpoint records: one per session, saved again and again while it runs."""

import re

from django.core.exceptions import ValidationError
from django.db import models

NAME_MAX_LENGTH = 120


def clean_checkpoint_name(name):
    """Names are unique per studio; spaces become underscores; no separators or control characters."""
    name = re.sub(r"\s+", "_", (name or "").strip())
    if not name:
        raise ValidationError("Give the checkpoint a name.")
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError(f"A checkpoint name has at most {NAME_MAX_LENGTH} characters.")
    if "/" in name or "\\" in name:
        raise ValidationError("A checkpoint name cannot contain / or \\.")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValidationError("A checkpoint name cannot contain control characters.")
    return name


class Checkpoint(models.Model):
    class State(models.TextChoices):
        EMPTY = "empty"
        INTERIM = "interim"
        FINALIZED = "finalized"
        INVALID = "invalid"

    studio = models.ForeignKey("studios.Studio", on_delete=models.CASCADE, related_name="checkpoints")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    state = models.CharField(max_length=10, choices=State.choices, default=State.EMPTY)
    created = models.DateTimeField(auto_now_add=True)
    saved = models.DateTimeField(null=True, blank=True, help_text="When its newest complete version was written.")
    size_bytes = models.BigIntegerField(default=0, help_text="What the session's writable layer held.")
    manifest_key = models.CharField(max_length=200, blank=True, help_text="The newest complete version.")
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    invalid_reason = models.TextField(blank=True)
    copied_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="copies",
        help_text="For a clone's inherited history: the parent's record (both share the stored content).",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["studio", "name"], name="unique_checkpoint_name")]
        ordering = ["-created", "-pk"]

    def __str__(self):
        return self.name

    @property
    def restorable(self):
        return self.state in (self.State.INTERIM, self.State.FINALIZED) and bool(self.manifest_key)


class CheckpointStore(models.Model):
    """A work directory's checkpoint store, with the state of its cleanup so that failures are seen."""

    work_dir = models.CharField(max_length=500, unique=True)
    last_cleanup = models.DateTimeField(null=True, blank=True)
    removed_objects = models.PositiveIntegerField(default=0, help_text="Removed by the last successful cleanup.")
    failures = models.PositiveIntegerField(default=0, help_text="Cleanups failed in a row.")
    last_error = models.TextField(blank=True)
    next_attempt = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return self.work_dir
