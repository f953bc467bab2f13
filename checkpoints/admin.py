from django.contrib import admin

from .models import Checkpoint, CheckpointStore


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "studio", "state", "size_bytes", "created", "saved"]
    list_filter = ["state"]
    search_fields = ["name", "studio__name"]


@admin.register(CheckpointStore)
class CheckpointStoreAdmin(admin.ModelAdmin):
    list_display = ["work_dir", "last_cleanup", "removed_objects", "failures", "last_error", "next_attempt"]
    list_filter = ["failures"]
