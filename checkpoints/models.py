"""Checkpoint records. The issue "Checkpoints" adds storage, snapshot and restore."""

from django.db import models


class Checkpoint(models.Model):
    class State(models.TextChoices):
        EMPTY = "empty"
        INTERIM = "interim"
        FINALIZED = "finalized"
        INVALID = "invalid"

    studio = models.ForeignKey("studios.Studio", on_delete=models.CASCADE, related_name="checkpoints")
    name = models.CharField(max_length=120)
    state = models.CharField(max_length=10, choices=State.choices, default=State.EMPTY)
    created = models.DateTimeField(auto_now_add=True)
    size_bytes = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["studio", "name"], name="unique_checkpoint_name")]
        ordering = ["-created"]

    def __str__(self):
        return self.name
