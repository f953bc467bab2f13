"""The API's endpoints. Thin: parse the request, check the role as the page does, call the lifecycle, answer.

Errors are raised, as on the pages, and answered by ``errors.handle_exception``.
"""

from django.db.models import prefetch_related_objects
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from checkpoints import records
from checkpoints.views import checkpoint_for
from studios import lifecycle, listing, permissions, presence
from studios.forms import CloneForm, ExtendForm, ResourcesForm, StudioForm
from studios.models import Membership, Template

from .errors import InvalidInput
from .serializers import (
    CheckpointRenameRequest,
    CheckpointSerializer,
    ComputeEnvironmentSerializer,
    DatasetSerializer,
    StartAsNewRequest,
    StudioAddRequest,
    StudioChangeRequest,
    StudioExtendRequest,
    StudioPageSerializer,
    StudioSerializer,
    StudioStartRequest,
    TemplateSerializer,
    WorkspaceSerializer,
    form_data,
    form_errors,
)

# How many studios a list answers when ``max`` is not given, and at most.
DEFAULT_PAGE = 100
LARGEST_PAGE = 1000

STUDIO_RELATED = ("workspace__organization", "compute_environment", "author", "session")
STUDIO_PREFETCH = ("connections__user", "datasets")


def refusals(*codes):
    """The schema's word for the error answers an endpoint may give (every one may answer 401)."""
    descriptions = {
        401: "not_authenticated or authentication_failed: no token, or one revoked, expired or of an inactive user",
        400: "invalid: the sentences the forms give, per field in errors",
        403: "role_required: the role needed",
        404: "not_found: no such thing, or not a member of its workspace",
        409: "refused: not possible in the studio's status or the workspace's limits now",
    }
    return {code: OpenApiResponse(description=descriptions[code]) for code in (401, *codes)}


def studio_answer(request, studio_id, status_code=status.HTTP_200_OK):
    """The studio's representation, read afresh (after an action) with what it shows."""
    studio, role = permissions.studio_for(request.user, studio_id)
    prefetch_related_objects([studio], *STUDIO_PREFETCH)
    with_restore_sources([studio])
    return Response(StudioSerializer(studio, context={"request": request, "role": role}).data, status=status_code)


def with_restore_sources(studios):
    """Give each of ``studios`` its ``restore_source``, which ``StudioSerializer`` shows: for a list, read for all
    of them at once."""
    sources = records.restore_sources(studios)
    for studio in studios:
        studio.restore_source = sources[studio.pk]


def resources_form(request_serializer, body, studio, form_class=ResourcesForm, **fields):
    """``form_class`` bound to the body's fields over the studio's current resources and mounts, validated."""
    defaults = {
        "cpus": studio.cpus,
        "memory_mb": studio.memory_mb,
        "datasets": list(studio.datasets.values_list("pk", flat=True)),
        "lifespan_hours": studio.lifespan_hours,
        "idle_stop_minutes": studio.idle_stop_minutes,
        **fields,
    }
    form = form_class(form_data(request_serializer, body, defaults), workspace=studio.workspace, studio=studio)
    if not form.is_valid():
        raise form_errors(request_serializer, form)
    return form.cleaned_data


class WorkspaceList(APIView):
    @extend_schema(operation_id="listWorkspaces", responses={200: WorkspaceSerializer(many=True), **refusals()})
    def get(self, request):
        """The workspaces you belong to, with your role in each."""
        memberships = Membership.objects.filter(user=request.user).select_related("workspace__organization")
        return Response(
            WorkspaceSerializer(
                memberships.order_by("workspace__organization__slug", "workspace__slug"), many=True
            ).data
        )


class WorkspaceDetail(APIView):
    @extend_schema(operation_id="describeWorkspace", responses={200: WorkspaceSerializer, **refusals(404)})
    def get(self, request, org, workspace):
        workspace, _ = permissions.workspace_for(request.user, org, workspace)
        membership = Membership.objects.select_related("workspace__organization").get(
            workspace=workspace, user=request.user
        )
        return Response(WorkspaceSerializer(membership).data)


class StudioList(APIView):
    @extend_schema(
        operation_id="listStudios",
        parameters=[
            OpenApiParameter(
                "search",
                str,
                description="As on the studio list: name words and author:, ce:, status: terms (also username: and "
                "computeEnvName:), combined.",
            ),
            OpenApiParameter("max", int, description=f"At most this many (1 to {LARGEST_PAGE}; {DEFAULT_PAGE})."),
            OpenApiParameter("offset", int, description="Skip this many first (0)."),
            OpenApiParameter(
                "orderBy",
                str,
                enum=list(listing.ORDERINGS),
                description="As on the studio list: newest (the default) or oldest created first, by name, or the "
                "last used first (then the newest).",
            ),
        ],
        responses={200: StudioPageSerializer, **refusals(400, 404)},
    )
    def get(self, request, org, workspace):
        """The workspace's studios that match the search, a page at a time, in the order asked."""
        workspace, role = permissions.workspace_for(request.user, org, workspace)
        limit, offset = page_bounds(request)
        studios = listing.search(workspace.studios.all(), request.query_params.get("search", "").strip())
        try:
            studios = listing.ordered(studios, request.query_params.get("orderBy", ""))
        except listing.UnknownOrdering as error:
            raise InvalidInput({"orderBy": [str(error)]}) from None
        page = list(studios.select_related(*STUDIO_RELATED).prefetch_related(*STUDIO_PREFETCH)[offset : offset + limit])
        with_restore_sources(page)
        return Response(
            {
                "total": studios.count(),
                "max": limit,
                "offset": offset,
                "studios": StudioSerializer(page, many=True, context={"request": request, "role": role}).data,
            }
        )

    @extend_schema(
        operation_id="addStudio",
        request=StudioAddRequest,
        responses={201: StudioSerializer, **refusals(400, 403, 404, 409)},
    )
    def post(self, request, org, workspace):
        """Add a stopped studio (maintain role), or start it at once with autoStart."""
        workspace, _ = permissions.workspace_for(request.user, org, workspace)
        permissions.require_role(request.user, workspace, permissions.MAINTAIN, "add studios")
        defaults = {
            "template": Template.JUPYTERLAB,
            "cpus": 2,
            "memory_mb": 8192,
            "start": False,
            "idle_stop_minutes": workspace.idle_stop_minutes,
        }
        body = form_data(StudioAddRequest, request.data, defaults)
        form = StudioForm(body, workspace=workspace)
        if not form.is_valid():
            raise form_errors(StudioAddRequest, form)
        if not isinstance(body["start"], bool):
            raise InvalidInput({"autoStart": ["autoStart is true or false."]})
        studio = lifecycle.add_studio(request.user, workspace, start=body["start"], **form.cleaned_data)
        return studio_answer(request, studio.pk, status.HTTP_201_CREATED)


def page_bounds(request: Request):
    try:
        limit = int(request.query_params.get("max", DEFAULT_PAGE))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise InvalidInput({"max": ["max and offset are whole numbers."]}) from None
    if not 1 <= limit <= LARGEST_PAGE:
        raise InvalidInput({"max": [f"max is from 1 to {LARGEST_PAGE}."]})
    if offset < 0:
        raise InvalidInput({"offset": ["offset is 0 or more."]})
    return limit, offset


class StudioDetail(APIView):
    @extend_schema(operation_id="describeStudio", responses={200: StudioSerializer, **refusals(404)})
    def get(self, request, studio_id):
        return studio_answer(request, studio_id)

    @extend_schema(
        operation_id="changeStudio",
        request=StudioChangeRequest,
        responses={200: StudioSerializer, **refusals(400, 403, 404, 409)},
    )
    def patch(self, request, studio_id):
        """Change the name, description, resources or mounts of a stopped or errored studio (maintain role)."""
        studio, _ = permissions.studio_for(request.user, studio_id)
        permissions.require_role(request.user, studio.workspace, permissions.MAINTAIN, "change studios")
        fields = {"name": studio.name, "description": studio.description}
        changes = resources_form(StudioChangeRequest, request.data, studio, CloneForm, **fields)
        lifecycle.change_studio(request.user, studio, **changes)
        return studio_answer(request, studio_id)

    @extend_schema(operation_id="deleteStudio", responses={204: None, **refusals(403, 404, 409)})
    def delete(self, request, studio_id):
        """Delete a stopped or errored studio (maintain role): immediate and final."""
        studio, _ = permissions.studio_for(request.user, studio_id)
        lifecycle.delete_studio(request.user, studio)
        return Response(status=status.HTTP_204_NO_CONTENT)


class StudioStart(APIView):
    @extend_schema(
        operation_id="startStudio",
        request=StudioStartRequest,
        responses={202: StudioSerializer, **refusals(400, 403, 404, 409)},
    )
    def post(self, request, studio_id):
        """Start a stopped or errored studio (maintain role), optionally with other resources or mounts; it
        restores its newest checkpoint. Follow its status and startupSteps until it is running."""
        studio, _ = permissions.studio_for(request.user, studio_id)
        permissions.require_role(request.user, studio.workspace, permissions.MAINTAIN, "start studios")
        changes = resources_form(StudioStartRequest, request.data, studio) if request.data else {}
        lifecycle.start_studio(request.user, studio, **changes)
        return studio_answer(request, studio_id, status.HTTP_202_ACCEPTED)


class StudioStop(APIView):
    @extend_schema(
        operation_id="stopStudio", request=None, responses={202: StudioSerializer, **refusals(403, 404, 409)}
    )
    def post(self, request, studio_id):
        """Stop a starting or running studio (maintain role): it saves a final checkpoint, then frees its compute."""
        studio, _ = permissions.studio_for(request.user, studio_id)
        lifecycle.stop_studio(request.user, studio)
        return studio_answer(request, studio_id, status.HTTP_202_ACCEPTED)


class StudioExtend(APIView):
    @extend_schema(
        operation_id="extendStudio",
        request=StudioExtendRequest,
        responses={200: StudioSerializer, **refusals(400, 403, 404, 409)},
    )
    def post(self, request, studio_id):
        """Stop a starting or running studio some hours later than its lifespan says (maintain role), within 120
        hours of its session's start; stopsAt says when."""
        studio, _ = permissions.studio_for(request.user, studio_id)
        permissions.require_role(request.user, studio.workspace, permissions.MAINTAIN, "extend studios")
        form = ExtendForm(form_data(StudioExtendRequest, request.data, {"hours": None}))
        if not form.is_valid():
            raise form_errors(StudioExtendRequest, form)
        lifecycle.extend_studio(request.user, studio, form.cleaned_data["hours"])
        presence.studio_changed(permissions.studio_for(request.user, studio_id)[0])
        return studio_answer(request, studio_id)


class StudioForceStop(APIView):
    @extend_schema(
        operation_id="forceStopStudio", request=None, responses={202: StudioSerializer, **refusals(403, 404, 409)}
    )
    def post(self, request, studio_id):
        """End the compute of a studio whose stop has not finished after a while (maintain role); changes since
        its last checkpoint may be lost."""
        studio, _ = permissions.studio_for(request.user, studio_id)
        lifecycle.force_stop_studio(request.user, studio)
        return studio_answer(request, studio_id, status.HTTP_202_ACCEPTED)


class CheckpointList(APIView):
    @extend_schema(operation_id="listCheckpoints", responses={200: CheckpointSerializer(many=True), **refusals(404)})
    def get(self, request, studio_id):
        """The studio's checkpoints, newest first."""
        studio, _ = permissions.studio_for(request.user, studio_id)
        checkpoints = studio.checkpoints.all()
        for checkpoint in checkpoints:
            checkpoint.studio = studio  # one studio for all, with its session
        return Response(CheckpointSerializer(checkpoints, many=True).data)


class CheckpointDetail(APIView):
    @extend_schema(
        operation_id="renameCheckpoint",
        request=CheckpointRenameRequest,
        responses={200: CheckpointSerializer, **refusals(400, 403, 404)},
    )
    def patch(self, request, checkpoint_id):
        """Rename a checkpoint (maintain role)."""
        checkpoint, _ = checkpoint_for(request.user, checkpoint_id)
        permissions.require_role(request.user, checkpoint.studio.workspace, permissions.MAINTAIN, "rename checkpoints")
        body = form_data(CheckpointRenameRequest, request.data, {"name": ""})
        if not isinstance(body["name"], str):
            raise InvalidInput({"name": ["Give the checkpoint a name."]})
        records.rename_checkpoint(request.user, checkpoint, body["name"])
        checkpoint.refresh_from_db()
        return Response(CheckpointSerializer(checkpoint).data)


def clone_from(request, checkpoint_id, start):
    """A new studio from the checkpoint, started or not: start as new and add as new."""
    checkpoint, _ = checkpoint_for(request.user, checkpoint_id)
    parent = checkpoint.studio
    action = "start studios as new" if start else "add studios as new"
    permissions.require_role(request.user, parent.workspace, permissions.MAINTAIN, action)
    defaults = {
        "description": "",
        "cpus": parent.cpus,
        "memory_mb": parent.memory_mb,
        "datasets": [],
        "idle_stop_minutes": parent.workspace.idle_stop_minutes,
    }
    form = CloneForm(
        form_data(StartAsNewRequest, request.data, defaults),
        workspace=parent.workspace,
        environment=parent.compute_environment,
    )
    if not form.is_valid():
        raise form_errors(StartAsNewRequest, form)
    clone = lifecycle.start_as_new(request.user, checkpoint, start=start, **form.cleaned_data)
    return studio_answer(request, clone.pk, status.HTTP_201_CREATED)


class StartAsNew(APIView):
    @extend_schema(
        operation_id="startAsNew",
        request=StartAsNewRequest,
        responses={201: StudioSerializer, **refusals(400, 403, 404, 409)},
    )
    def post(self, request, checkpoint_id):
        """A new studio with the checkpoint's studio's template, compute environment and checkpoint history,
        started from the checkpoint (maintain role)."""
        return clone_from(request, checkpoint_id, start=True)


class AddAsNew(APIView):
    @extend_schema(
        operation_id="addAsNew",
        request=StartAsNewRequest,
        responses={201: StudioSerializer, **refusals(400, 403, 404, 409)},
    )
    def post(self, request, checkpoint_id):
        """As startAsNew, but the new studio is added stopped; its first start restores the checkpoint (maintain
        role)."""
        return clone_from(request, checkpoint_id, start=False)


def workspace_to_add_to(request, org, workspace):
    """The workspace, for what the add and start forms show: the maintain role, as those forms."""
    workspace, _ = permissions.workspace_for(request.user, org, workspace)
    permissions.require_role(request.user, workspace, permissions.MAINTAIN, "add studios")
    return workspace


class TemplateList(APIView):
    @extend_schema(operation_id="listTemplates", responses={200: TemplateSerializer(many=True), **refusals(403, 404)})
    def get(self, request, org, workspace):
        """Each template, and on which of the workspace's compute environments it can run (maintain role)."""
        environments = workspace_to_add_to(request, org, workspace).compute_environments.order_by("name")
        templates = []
        for template, label in Template.choices:
            where = [(environment, environment.template_refusal(template)) for environment in environments]
            templates.append(
                {
                    "template": template,
                    "label": label,
                    "computeEnvironments": [
                        {"id": environment.pk, "name": environment.name, "available": not reason, "reason": reason}
                        for environment, reason in where
                    ],
                }
            )
        return Response(TemplateSerializer(templates, many=True).data)


class ComputeEnvironmentList(APIView):
    @extend_schema(
        operation_id="listComputeEnvironments",
        responses={200: ComputeEnvironmentSerializer(many=True), **refusals(403, 404)},
    )
    def get(self, request, org, workspace):
        """The workspace's compute environments, whether studios can start on each and why not (maintain role)."""
        environments = workspace_to_add_to(request, org, workspace).compute_environments.order_by("name")
        return Response(ComputeEnvironmentSerializer(environments, many=True).data)


class DatasetList(APIView):
    @extend_schema(
        operation_id="listDatasets",
        parameters=[
            OpenApiParameter(
                "studio",
                int,
                description="A studio of the workspace about to start: its own mounts do not count as held, and "
                "writable is said for its compute environment.",
            ),
        ],
        responses={200: DatasetSerializer(many=True), **refusals(400, 403, 404)},
    )
    def get(self, request, org, workspace):
        """The workspace's datasets, and whether each can be mounted now: a data path a starting or running studio
        mounts is held until it stops (maintain role)."""
        workspace = workspace_to_add_to(request, org, workspace)
        studio = None
        if "studio" in request.query_params:
            studio = workspace.studios.filter(pk=_whole_number(request, "studio")).first()
            if studio is None:
                raise InvalidInput({"studio": ["No such studio in this workspace."]})
        form = ResourcesForm(workspace=workspace, studio=studio)
        return Response(DatasetSerializer(form.dataset_choices(), many=True).data)


def _whole_number(request, name):
    try:
        return int(request.query_params[name])
    except ValueError:
        raise InvalidInput({name: [f"{name} is a whole number."]}) from None
