from django.contrib import admin

from .models import Checkpoint


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "studio", "state", "size_bytes", "created"]
    list_filter = ["state"]
    search_fields = ["name", "studio__name"]
