from django.contrib import admin
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from . import environments
from .forms import CredentialsForm
from .models import (
    AccessToken,
    ActiveMount,
    ComputeEnvironment,
    Dataset,
    Event,
    Membership,
    Organization,
    Session,
    SessionConnection,
    Studio,
    WebProcess,
    Workspace,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "max_running_studios", "default_lifespan_hours", "idle_stop_minutes"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "workspace", "role"]
    list_filter = ["role", "workspace"]


class ComputeEnvironmentAdminForm(CredentialsForm):
    class Meta:
        model = ComputeEnvironment
        fields = [
            "workspace",
            "name",
            "kind",
            "region",
            "work_dir",
            "writable_data_paths",
            "job_queue",
            "status",
            "status_reason",
            "min_cpus",
            "max_cpus",
            "min_memory_mb",
            "max_memory_mb",
        ]


@admin.register(ComputeEnvironment)
class ComputeEnvironmentAdmin(admin.ModelAdmin):
    """Credentials are write-only here as on the workspace's pages; the status is what the last check found."""

    form = ComputeEnvironmentAdminForm
    list_display = ["name", "workspace", "kind", "region", "job_queue", "status"]
    list_filter = ["kind", "status"]
    readonly_fields = [
        "credentials",
        "status",
        "status_reason",
        "status_checked",
        "template_problems",
        "isolation_problem",
    ]

    @admin.display(description="Stored credentials")
    def credentials(self, environment):
        if environment.has_credentials:
            return "an access key pair (encrypted, never shown)"
        return "none: the platform's own AWS role"

    @method_decorator(sensitive_post_parameters("secret_access_key"))
    def changeform_view(self, request, *args, **kwargs):
        return super().changeform_view(request, *args, **kwargs)

    def save_model(self, request, obj, form, change):
        environments.save_and_check(obj)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "workspace", "uri", "region"]


@admin.register(Studio)
class StudioAdmin(admin.ModelAdmin):
    list_display = ["name", "workspace", "status", "template", "compute_environment", "author", "created"]
    list_filter = ["status", "template"]
    search_fields = ["name", "author__username"]
    readonly_fields = ["status", "status_reason", "status_changed", "session"]


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ["studio", "started", "started_by", "stops_at", "ended", "end_status"]
    list_filter = ["end_status"]
    # The token lets its holder act as the session: operators never see it.
    exclude = ["token"]
    readonly_fields = [
        field.name for field in Session._meta.get_fields() if field.concrete and field.name not in ("id", "token")
    ]


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """The activity log, read-only: only the lifecycle service and the proxy write it."""

    list_display = ["at", "kind", "studio_name", "actor", "reason", "workspace"]
    list_filter = ["kind", "reason", "workspace"]
    search_fields = ["studio_name", "actor__username", "message"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ActiveMount)
class ActiveMountAdmin(admin.ModelAdmin):
    list_display = ["data_path", "studio", "workspace", "writable"]


@admin.register(SessionConnection)
class SessionConnectionAdmin(admin.ModelAdmin):
    list_display = ["studio", "user", "opened", "web_process"]
    list_filter = ["web_process"]


@admin.register(WebProcess)
class WebProcessAdmin(admin.ModelAdmin):
    list_display = ["id", "heartbeat"]


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    """Operators see and revoke tokens; they never see a secret (only its hash is kept) and make none here."""

    list_display = ["name", "user", "prefix", "created", "expires", "last_used", "revoked"]
    list_filter = ["revoked"]
    search_fields = ["name", "user__username", "prefix"]
    readonly_fields = ["user", "name", "prefix", "created", "expires", "last_used"]

    def has_add_permission(self, request):
        return False
