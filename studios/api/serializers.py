"""What the API answers (the representations) and what it takes (the request bodies).

The request bodies only name the fields and their types, for the schema and for ``form_data``: the pages' forms
validate them, so that a refusal carries the sentence the page shows.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from studios import origins, permissions
from studios.models import Role, Template

from .errors import InvalidInput

STEP_STATES = ["pending", "in-progress", "succeeded", "errored"]


class WorkspaceSerializer(serializers.Serializer):
    """A workspace the user belongs to (a membership), with the user's role in it."""

    organization = serializers.CharField(source="workspace.organization.slug", help_text="The organization's slug.")
    slug = serializers.CharField(source="workspace.slug")
    name = serializers.CharField(source="workspace.name")
    organizationName = serializers.CharField(source="workspace.organization.name")
    role = serializers.ChoiceField(choices=Role.choices, help_text="Your role in the workspace.")
    maxRunningStudios = serializers.IntegerField(
        source="workspace.max_running_studios", allow_null=True, help_text="How many studios may run at once."
    )
    defaultLifespanHours = serializers.IntegerField(
        source="workspace.default_lifespan_hours", help_text="A new studio's lifespan unless another is chosen."
    )
    idleStopMinutes = serializers.IntegerField(
        source="workspace.idle_stop_minutes", allow_null=True, help_text="A new studio's idle stop (null: none)."
    )


class EnvironmentReferenceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    region = serializers.CharField()


class NamedReferenceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class StepSerializer(serializers.Serializer):
    name = serializers.CharField()
    state = serializers.ChoiceField(choices=STEP_STATES)
    message = serializers.CharField(allow_blank=True)
    checkpoint = serializers.CharField(required=False, help_text="The restoring step's checkpoint, by its name now.")


class ConnectedMemberSerializer(serializers.Serializer):
    username = serializers.CharField()
    since = serializers.DateTimeField()


class CheckpointSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    studio = serializers.IntegerField(source="studio_id")
    state = serializers.CharField(help_text="empty, interim, finalized or invalid.")
    created = serializers.DateTimeField()
    saved = serializers.DateTimeField(allow_null=True, help_text="When its newest complete version was written.")
    sizeBytes = serializers.IntegerField(source="size_bytes")
    restorable = serializers.BooleanField(help_text="Whether a start can restore it (start as new from it).")
    inherited = serializers.SerializerMethodField(help_text="Copied from the studio's parent when it was cloned.")
    inUse = serializers.SerializerMethodField(help_text="The running session saves into it.")
    invalidReason = serializers.CharField(source="invalid_reason")

    def get_inherited(self, checkpoint) -> bool:
        return checkpoint.copied_from_id is not None

    def get_inUse(self, checkpoint) -> bool:
        session = checkpoint.studio.active_session
        return session is not None and session.checkpoint_id == checkpoint.pk


class StudioSerializer(serializers.Serializer):
    """A studio as its pages show it, with its ``restore_source`` (``views.with_restore_sources``). The context holds
    the request and the user's ``role`` in its workspace."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    workspace = serializers.SerializerMethodField(help_text="organization/workspace")
    template = serializers.ChoiceField(choices=Template.choices)
    computeEnvironment = EnvironmentReferenceSerializer(source="compute_environment")
    datasets = NamedReferenceSerializer(many=True, source="datasets.all")
    cpus = serializers.IntegerField()
    memoryMb = serializers.IntegerField(source="memory_mb")
    lifespanHours = serializers.IntegerField(
        source="lifespan_hours", help_text="Each session is stopped this long after it started, unless extended."
    )
    stopsAt = serializers.DateTimeField(
        source="stops_at", allow_null=True, help_text="When a starting or running studio is stopped (its lifespan)."
    )
    secondsLeft = serializers.SerializerMethodField(help_text="Until stopsAt; null when not starting or running.")
    idleStopMinutes = serializers.IntegerField(
        source="idle_stop_minutes",
        allow_null=True,
        help_text="Stopped after this long without a member's use or its IDE's work; null: never.",
    )
    author = serializers.CharField(source="author.username")
    created = serializers.DateTimeField()
    parentCheckpoint = serializers.IntegerField(source="parent_checkpoint_id", allow_null=True)
    status = serializers.CharField(help_text="starting, running, stopping, stopped or errored.")
    statusReason = serializers.CharField(source="status_reason", help_text="Why it errored or what a stop lost.")
    statusChanged = serializers.DateTimeField(source="status_changed")
    startupSteps = StepSerializer(many=True, source="startup_steps", help_text="The latest start's progress.")
    lastCheckpoint = CheckpointSerializer(
        source="restore_source", allow_null=True, help_text="The newest saved checkpoint: what a start restores."
    )
    connectedMembers = serializers.SerializerMethodField()
    lastActivity = serializers.DateTimeField(source="last_activity", allow_null=True)
    role = serializers.SerializerMethodField(help_text="Your role in its workspace.")
    actions = serializers.SerializerMethodField(help_text="What your role may do in its status now.")
    sessionUrl = serializers.SerializerMethodField(help_text="Where members open the running session.")

    def get_secondsLeft(self, studio) -> int | None:
        left = studio.time_left
        return int(left.total_seconds()) if left is not None else None

    def get_workspace(self, studio) -> str:
        return f"{studio.workspace.organization.slug}/{studio.workspace.slug}"

    @extend_schema_field(ConnectedMemberSerializer(many=True))
    def get_connectedMembers(self, studio):
        return [{"username": member.username, "since": since} for member, since in studio.connected_members]

    def get_role(self, studio) -> str:
        return self.context["role"]

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_actions(self, studio):
        return permissions.studio_actions(self.context["role"], studio)

    @extend_schema_field(OpenApiTypes.URI)
    def get_sessionUrl(self, studio):
        if "connect" not in permissions.studio_actions(self.context["role"], studio):
            return None
        return origins.session_url(self.context["request"], studio)


class StudioPageSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="How many studios match, on all pages.")
    max = serializers.IntegerField()
    offset = serializers.IntegerField()
    studios = StudioSerializer(many=True)


class TemplateEnvironmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    available = serializers.BooleanField()
    reason = serializers.CharField(help_text="Why the template cannot run there; empty when it can.")


class TemplateSerializer(serializers.Serializer):
    template = serializers.ChoiceField(choices=Template.choices)
    label = serializers.CharField()
    computeEnvironments = TemplateEnvironmentSerializer(many=True)


class ComputeEnvironmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    region = serializers.CharField()
    status = serializers.CharField(help_text="available, invalid or checking; studios start only when available.")
    statusReason = serializers.CharField(source="status_reason")
    statusChecked = serializers.DateTimeField(source="status_checked", allow_null=True)
    isolationProblem = serializers.CharField(
        source="isolation_problem", help_text="Why sessions here are not isolated; empty when they are."
    )
    minCpus = serializers.IntegerField(source="min_cpus")
    maxCpus = serializers.IntegerField(source="max_cpus")
    minMemoryMb = serializers.IntegerField(source="min_memory_mb")
    maxMemoryMb = serializers.IntegerField(source="max_memory_mb")
    writableDataPaths = serializers.ListField(child=serializers.CharField(), source="writable_data_paths")


class DatasetSerializer(serializers.Serializer):
    """A dataset with what the add and start forms show about it (``ResourcesForm.dataset_choices``)."""

    id = serializers.IntegerField(source="dataset.id")
    name = serializers.CharField(source="dataset.name")
    uri = serializers.CharField(source="dataset.uri")
    region = serializers.CharField(source="dataset.region")
    mountable = serializers.SerializerMethodField(help_text="No starting or running studio holds its data path.")
    heldBy = NamedReferenceSerializer(
        source="holder", allow_null=True, help_text="The starting or running studio that holds its data path."
    )
    writable = serializers.BooleanField(
        allow_null=True, help_text="Mounted read-write on the compute environment asked about (null: none asked)."
    )
    otherRegion = serializers.BooleanField(source="other_region", help_text="In another region than that.")

    def get_mountable(self, choice) -> bool:
        return choice["holder"] is None


# Request bodies. ``source`` is the name of the form field that validates each.


class StudioAddRequest(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(required=False)
    template = serializers.ChoiceField(choices=Template.choices, required=False, help_text="Default: jupyterlab.")
    computeEnvironment = serializers.IntegerField(source="compute_environment", help_text="Its id.")
    datasets = serializers.ListField(child=serializers.IntegerField(), required=False, help_text="Their ids.")
    cpus = serializers.IntegerField(required=False, help_text="Default: 2.")
    memoryMb = serializers.IntegerField(source="memory_mb", required=False, help_text="Default: 8192.")
    lifespanHours = serializers.IntegerField(
        source="lifespan_hours", required=False, help_text="1 to 120; default: the workspace's defaultLifespanHours."
    )
    idleStopMinutes = serializers.IntegerField(
        source="idle_stop_minutes",
        required=False,
        allow_null=True,
        help_text="30 to 1440; null: never. Default: the workspace's idleStopMinutes.",
    )
    autoStart = serializers.BooleanField(
        source="start", required=False, help_text="Start it at once; when the start is refused, nothing is added."
    )


class StudioChangeRequest(serializers.Serializer):
    name = serializers.CharField(required=False)
    description = serializers.CharField(required=False)
    datasets = serializers.ListField(child=serializers.IntegerField(), required=False)
    cpus = serializers.IntegerField(required=False)
    memoryMb = serializers.IntegerField(source="memory_mb", required=False)
    lifespanHours = serializers.IntegerField(source="lifespan_hours", required=False, help_text="1 to 120.")
    idleStopMinutes = serializers.IntegerField(
        source="idle_stop_minutes", required=False, allow_null=True, help_text="30 to 1440; null: never."
    )


class StudioStartRequest(serializers.Serializer):
    datasets = serializers.ListField(child=serializers.IntegerField(), required=False)
    cpus = serializers.IntegerField(required=False)
    memoryMb = serializers.IntegerField(source="memory_mb", required=False)
    lifespanHours = serializers.IntegerField(
        source="lifespan_hours", required=False, help_text="1 to 120; default: the studio's own (it keeps it)."
    )


class StudioExtendRequest(serializers.Serializer):
    hours = serializers.IntegerField(help_text="How many hours later it stops; at most 120 hours from its start.")


class CheckpointRenameRequest(serializers.Serializer):
    name = serializers.CharField(help_text="Unique in the studio; spaces become underscores.")


class StartAsNewRequest(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(required=False, help_text="Default: none.")
    datasets = serializers.ListField(child=serializers.IntegerField(), required=False)
    cpus = serializers.IntegerField(required=False, help_text="Default: the parent's.")
    memoryMb = serializers.IntegerField(source="memory_mb", required=False, help_text="Default: the parent's.")
    lifespanHours = serializers.IntegerField(
        source="lifespan_hours", required=False, help_text="1 to 120; default: the workspace's defaultLifespanHours."
    )
    idleStopMinutes = serializers.IntegerField(
        source="idle_stop_minutes",
        required=False,
        allow_null=True,
        help_text="30 to 1440; null: never. Default: the workspace's idleStopMinutes.",
    )


def form_data(request_serializer, body, defaults):
    """The request body under the form's field names, over ``defaults``; unknown fields are refused."""
    if not isinstance(body, dict):
        raise InvalidInput({"": ["Send a JSON object."]})
    fields = request_serializer().fields
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise InvalidInput({name: [f"Unknown field; this request takes {', '.join(fields)}."] for name in unknown})
    return {**defaults, **{fields[name].source: value for name, value in body.items()}}


def form_errors(request_serializer, form):
    """A form's errors under the request's field names ("" for the form as a whole): an InvalidInput."""
    names = {field.source: name for name, field in request_serializer().fields.items()}
    return InvalidInput({names.get(field, ""): list(errors) for field, errors in form.errors.items()})
