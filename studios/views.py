"""Pages and actions. Thin: parse the request, call the lifecycle service, render."""

import hmac
import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import prefetch_related_objects
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template import loader
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from checkpoints import records

from . import environments, lifecycle, listing, origins, permissions, presence, tokens
from . import metrics as studio_metrics
from .exceptions import DATABASE_OUTAGES, ActionRefused, outage_page
from .forms import ENVIRONMENT_FORMS, AccessTokenForm, ExtendForm, ResourcesForm, StudioForm
from .models import ComputeEnvironment, Event, Membership, Session, Studio, StudioStatus
from .supervisor import protocol

log = logging.getLogger(__name__)

# How many rows a page of the studio list and of the Checkpoints tab shows.
STUDIOS_PER_PAGE = 50
CHECKPOINTS_PER_PAGE = 50


# What says the database cannot be reached.
def server_error(request):
    """Django's handler500 (it has logged the error with its traceback): 503 with a sentence when the database
    cannot be reached, else the 500 page. (A broker outage fails no request: ``lifecycle`` queues its tasks after
    the commit and the reconcile queues them again.)

    The failure may be the database itself, so the page is rendered from its template alone: no request, so no
    context processor, no user and no query."""
    if isinstance(sys.exc_info()[1], DATABASE_OUTAGES):
        return HttpResponse(outage_page(), status=503)
    return HttpResponse(loader.render_to_string("500.html"), status=500)


@login_required
def home(request):
    memberships = Membership.objects.filter(user=request.user).select_related("workspace__organization")
    return render(request, "studios/home.html", {"memberships": memberships})


@login_required
def studio_list(request, org, workspace):
    workspace, role = permissions.workspace_for(request.user, org, workspace)
    query = request.GET.get("q", "").strip()
    order = request.GET.get("order", "")
    if order not in listing.ORDERINGS:
        order = listing.DEFAULT_ORDERING
    studios = listing.search(workspace.studios.select_related("compute_environment", "author", "session"), query)
    page = Paginator(listing.ordered(studios, order), STUDIOS_PER_PAGE).get_page(request.GET.get("page"))
    shown = list(page.object_list)
    prefetch_related_objects(shown, "connections__user")
    context = {
        "workspace": workspace,
        "role": role,
        "page": page,
        "studios": shown,
        "query": query,
        "order": order,
        "orderings": [(name, label) for name, (label, _) in listing.ORDERINGS.items()],
        "can_maintain": permissions.has_role(role, permissions.MAINTAIN),
        "can_connect": permissions.has_role(role, permissions.CONNECT),
        "can_admin": permissions.has_role(role, permissions.ADMIN),
    }
    template = "studios/partials/studio_table.html" if request.htmx else "studios/studio_list.html"
    return render(request, template, context)


def workspace_page(lowest, action):
    """A page of a workspace for ``lowest`` and above: a 404 for non-members, a 403 for lower roles. The view gets
    the workspace and the user's role in place of the URL's slugs."""

    def decorate(view):
        @login_required
        @wraps(view)
        def page(request, org, workspace, **kwargs):
            workspace, role = permissions.workspace_for(request.user, org, workspace)
            permissions.require_role(request.user, workspace, lowest, action)
            return view(request, workspace, role, **kwargs)

        return page

    return decorate


@workspace_page(permissions.MAINTAIN, "add studios")
def studio_add(request, workspace, role):
    form = StudioForm(request.POST or None, workspace=workspace)
    if request.method == "POST" and form.is_valid():
        try:
            studio = lifecycle.add_studio(request.user, workspace, **form.cleaned_data)
        except ActionRefused as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Studio {studio.name} added. Start it when you are ready.")
            return redirect(studio)
    environments = workspace.compute_environments.order_by("name")
    return render(
        request,
        "studios/studio_add.html",
        {"workspace": workspace, "role": role, "form": form, "environments": environments},
        status=400 if form.errors else 200,
    )


DETAIL_TABS = [("configuration", "Configuration"), ("checkpoints", "Checkpoints"), ("activity", "Activity")]
EVENTS_PER_PAGE = 50


def event_page(request, events):
    """One page of activity events, newest first, as the ``page`` parameter asks."""
    return Paginator(events.select_related("actor", "studio"), EVENTS_PER_PAGE).get_page(request.GET.get("page"))


def status_context(studio, role):
    """What the status panel of a studio's page shows ``role``, on the page and as pushed to it (``consumers``)."""
    prefetch_related_objects([studio], "connections__user")
    return {
        "studio": studio,
        "workspace": studio.workspace,
        "role": role,
        "can_maintain": permissions.has_role(role, permissions.MAINTAIN),
        "can_connect": permissions.has_role(role, permissions.CONNECT),
        "mounts": studio.active_mounts.select_related("dataset") if studio.status != StudioStatus.STOPPED else [],
        "latest_checkpoint": records.restore_source(studio) if studio.can_start else None,
    }


def listed_studios(workspace_id):
    """A workspace's studios with what the list's rows show of them."""
    studios = Studio.objects.filter(workspace_id=workspace_id)
    return studios.select_related("compute_environment", "author").prefetch_related("connections__user")


@login_required
def studio_detail(request, studio_id):
    studio, role = permissions.studio_for(request.user, studio_id)
    context = status_context(studio, role)
    if request.htmx:
        return render(request, "studios/partials/studio_status.html", context)
    tab = request.GET.get("tab")
    context.update(
        tabs=DETAIL_TABS,
        tab=tab if tab in dict(DETAIL_TABS) else "configuration",
        events=event_page(request, studio.events.all()) if tab == "activity" else None,
        checkpoints=Paginator(studio.checkpoints.all(), CHECKPOINTS_PER_PAGE).get_page(request.GET.get("page")),
        start_form=ResourcesForm(
            workspace=studio.workspace,
            studio=studio,
            initial={"cpus": studio.cpus, "memory_mb": studio.memory_mb, "datasets": studio.datasets.all()},
        ),
    )
    return render(request, "studios/studio_detail.html", context)


@login_required
@ensure_csrf_cookie
def studio_ticket(request, studio_id):
    """The platform's door to a studio's session origin: checks the login and the role, then sends the browser to
    the session origin with a ticket (``origins``); or says why not, offering Start to maintainers of a stopped
    studio (and waiting for a starting one)."""
    studio, role = permissions.studio_for(request.user, studio_id)
    if not permissions.has_role(role, permissions.CONNECT):
        message = f"You need the connect role or higher to open this session; your role is {role}."
        return session_unavailable(request, 403, message, studio, role)
    if not studio.can_connect:
        return session_unavailable(request, 409, f"{studio.name} is {studio.status}, not running.", studio, role)
    next_path, browser = request.GET.get("next", "/"), request.GET.get("browser", "")
    if not origins.is_browser(browser):
        # Not sent by the session origin (an old link): go there, which comes back naming this browser.
        return redirect(
            origins.session_origin(studio.pk, request.build_absolute_uri("/")) + origins.safe_next(next_path)
        )
    response = redirect(origins.grant(request, studio, next_path, browser))
    response["Cache-Control"] = "no-store"
    return response


def session_unavailable(request, status, message, studio, role):
    """A shared link to a studio that is not running tells its status and, to maintainers, offers Start."""
    actions = [action for action in permissions.studio_actions(role, studio) if action == "start"]
    context = {"status": status, "message": message, "studio": studio, "workspace": studio.workspace, "role": role}
    return render(request, "studios/session_unavailable.html", {**context, "actions": actions}, status=status)


def _studio_action(request, studio, action, done_message, success_url=None, extra_tags=""):
    """Act, and go back where the action was asked: the list (whose forms say ``back=list``), else the studio's
    page (``success_url``: where to go once it is done, Delete's list). ``extra_tags``: the done message's."""
    back = studio.workspace.get_absolute_url() if request.POST.get("back") == "list" else studio.get_absolute_url()
    try:
        action(request.user, studio)
    except ActionRefused as error:
        messages.error(request, str(error))
        return redirect(back)
    messages.success(request, done_message.format(name=studio.name), extra_tags=extra_tags)
    return redirect(success_url or back)


@login_required
@require_POST
def studio_start(request, studio_id):
    """Start, optionally with new CPUs, memory and mounts when the form sends them."""
    studio, _ = permissions.studio_for(request.user, studio_id)
    changes = {}
    if "cpus" in request.POST:
        form = ResourcesForm(request.POST, workspace=studio.workspace, studio=studio)
        if not form.is_valid():
            for errors in form.errors.values():
                for error in errors:
                    messages.error(request, str(error))
            return redirect(studio)
        changes = form.cleaned_data

    def start(user, studio):
        lifecycle.start_studio(user, studio, **changes)

    # The message goes once the studio no longer starts (studios.js): the page shows where it stands.
    return _studio_action(request, studio, start, "Starting {name}.", extra_tags=f"while-starting studio-{studio.pk}")


@login_required
@require_POST
def studio_stop(request, studio_id):
    studio, _ = permissions.studio_for(request.user, studio_id)
    return _studio_action(
        request, studio, lifecycle.stop_studio, "Stopping {name}.", extra_tags=f"while-stopping studio-{studio.pk}"
    )


@login_required
@require_POST
def studio_extend(request, studio_id):
    """Extend a running studio's lifespan: from its page's form, or the one click of the warning (htmx), which gets
    the lifespan fragment back, with the refusal in it when there is one."""
    studio, _ = permissions.studio_for(request.user, studio_id)
    permissions.require_role(request.user, studio.workspace, permissions.MAINTAIN, "extend studios")
    form = ExtendForm(request.POST)
    refusal = " ".join(str(error) for errors in form.errors.values() for error in errors)
    if not refusal:
        try:
            lifecycle.extend_studio(request.user, studio, form.cleaned_data["hours"])
        except ActionRefused as error:
            refusal = str(error)
    studio, _ = permissions.studio_for(request.user, studio_id)  # as it is now
    if request.htmx:
        # 200 with the refusal in the fragment: htmx swaps in no error answer.
        return render(request, "studios/partials/lifespan.html", {"studio": studio, "refusal": refusal})
    if refusal:
        messages.error(request, refusal)
    else:
        stops_at = timezone.localtime(studio.stops_at)
        messages.success(request, f"Extended {studio.name}: it now stops at {stops_at:%Y-%m-%d %H:%M %Z}.")
    return redirect(studio)


@login_required
@require_POST
def studio_keep(request, studio_id):
    """The one click of the idle warning: a member still uses the studio (htmx; the lifespan fragment back)."""
    studio, _ = permissions.studio_for(request.user, studio_id)
    refusal = ""
    try:
        lifecycle.keep_studio(request.user, studio)
    except ActionRefused as error:
        refusal = str(error)
    studio, _ = permissions.studio_for(request.user, studio_id)
    if request.htmx:
        return render(request, "studios/partials/lifespan.html", {"studio": studio, "refusal": refusal})
    if refusal:
        messages.error(request, refusal)
    else:
        messages.success(request, f"{studio.name} keeps running.")
    return redirect(studio)


@login_required
@require_POST
def studio_force_stop(request, studio_id):
    studio, _ = permissions.studio_for(request.user, studio_id)
    return _studio_action(
        request,
        studio,
        lifecycle.force_stop_studio,
        "Force stopped {name}; changes since its last checkpoint may be lost.",
    )


@login_required
@require_POST
def studio_delete(request, studio_id):
    studio, _ = permissions.studio_for(request.user, studio_id)
    return _studio_action(
        request, studio, lifecycle.delete_studio, "Deleted {name}.", success_url=studio.workspace.get_absolute_url()
    )


@workspace_page(permissions.ADMIN, "see the workspace's activity")
def workspace_activity(request, workspace, role):
    """Every studio's activity in the workspace, newest first, filtered by studio, member and kind."""
    events = workspace.events.all()
    chosen = {key: request.GET.get(key, "") for key in ("studio", "member", "kind")}
    studio, member, kind = chosen.values()
    if studio.isdigit():
        events = events.filter(studio_id=int(studio))
    if member:
        events = events.filter(actor__username=member)
    if kind in Event.Kind.values:
        events = events.filter(kind=kind)
    context = {
        "workspace": workspace,
        "role": role,
        "events": event_page(request, events),
        "studios": workspace.studios.order_by("name").values_list("pk", "name"),
        "members": workspace.memberships.order_by("user__username").values_list("user__username", flat=True),
        "kinds": Event.Kind.choices,
        "chosen": chosen,
        "query": "".join(f"{urlencode({key: value})}&" for key, value in chosen.items() if value),  # for the pager
    }
    return render(request, "studios/workspace_activity.html", context)


@workspace_page(permissions.ADMIN, "manage compute environments")
def environment_list(request, workspace, role):
    environments = workspace.compute_environments.order_by("name")
    checking = any(environment.status == ComputeEnvironment.Status.CHECKING for environment in environments)
    context = {"workspace": workspace, "role": role, "environments": environments, "checking": checking}
    return render(request, "studios/environment_list.html", context)


@sensitive_post_parameters("secret_access_key")
@workspace_page(permissions.ADMIN, "manage compute environments")
def environment_edit(request, workspace, role, environment_id=None, kind=ComputeEnvironment.Kind.AWS_BATCH):
    """Add (no ``environment_id``: one of ``kind``) or edit an AWS Batch or Slurm compute environment; saving queues
    its check, whose answer the list shows."""
    environment = None
    if environment_id is not None:
        environment = get_object_or_404(workspace.compute_environments, pk=environment_id, kind__in=ENVIRONMENT_FORMS)
        kind = environment.kind
    form = ENVIRONMENT_FORMS[kind](request.POST or None, instance=environment, workspace=workspace)
    if request.method == "POST" and form.is_valid():
        try:
            environment = environments.save_environment(request.user, workspace, form.save(commit=False), kind)
        except ActionRefused as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Saved {environment.name}; checking whether studios can start on it.")
            return redirect("environment_list", workspace.organization.slug, workspace.slug)
    context = {"workspace": workspace, "role": role, "form": form, "environment": environment, "kind": kind}
    context["kind_label"] = ComputeEnvironment.Kind(kind).label
    return render(request, "studios/environment_edit.html", context, status=400 if form.errors else 200)


@login_required
def access_tokens(request):
    """The user's own personal access tokens: make one (its secret is shown in this response only), see when
    each was last used, revoke."""
    form = AccessTokenForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        _, secret = tokens.issue_token(request.user, **form.cleaned_data)
        form = AccessTokenForm()
    context = {"form": form, "secret": secret, "tokens": request.user.access_tokens.all()}
    response = render(request, "studios/access_tokens.html", context, status=400 if form.errors else 200)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def access_token_revoke(request, token_id):
    token = tokens.revoke_token(request.user, token_id)
    if request.htmx:
        return render(request, "studios/partials/access_token_row.html", {"token": token})
    messages.success(request, f"Access token {token.name} revoked.")
    return redirect("access_tokens")


def bearer_token(request):
    """The credential a machine sends as ``Authorization: Bearer <credential>``; "" without one."""
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def metrics(request):
    """Prometheus metrics (``metrics``), for a scraper holding STUDIOS_METRICS_TOKEN; not found when it is unset."""
    expected = settings.STUDIOS_METRICS_TOKEN
    if not expected:
        raise Http404("No metrics here")
    token = bearer_token(request)
    if not hmac.compare_digest(token.encode(), expected.encode()):
        response = HttpResponse("Send the metrics token as a bearer token.", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(studio_metrics.exposition(), content_type=studio_metrics.CONTENT_TYPE)


# The session supervisor's reports, authenticated by the session's token. Only what the protocol lets a
# supervisor say is believed; anything else is refused and logged.

SESSION_REPORTS: dict[str, Callable[..., bool]] = {
    protocol.PROGRESS: lifecycle.session_progress,
    protocol.READY: lifecycle.session_ready,
    protocol.FAILED: lifecycle.session_failed,
    protocol.CHECKPOINT: lifecycle.session_checkpoint_saved,
    protocol.CHECKPOINT_FAILED: lifecycle.session_checkpoint_failed,
    protocol.WORKING: lifecycle.session_working,
    protocol.PAGES_SAVED: lifecycle.session_pages_saved,
}


@csrf_exempt
@require_POST
def session_report(request, what):
    token = bearer_token(request)
    studio_id = (
        Session.objects.filter(token=token, ended=None).values_list("studio_id", flat=True).first() if token else None
    )
    if studio_id is None:
        log.warning("session report %r refused: no running session has its token", what[:40])
        return JsonResponse({"error": "no starting or running session has this token"}, status=409)
    try:
        report = protocol.parse_report(what, json.loads(request.body), protocol.manifest_prefix(studio_id))
    except (ValueError, RecursionError) as error:
        log.warning("studio %s: session report %r refused: %s", studio_id, what[:40], error)
        return JsonResponse(
            {"error": str(error) if isinstance(error, protocol.BadReport) else "malformed report"}, status=400
        )
    if not SESSION_REPORTS[what](token, **report):
        return JsonResponse({"error": "no starting or running session has this token"}, status=409)
    return HttpResponse(status=200)


@csrf_exempt
@require_POST
def redeem_start_ticket(request):
    """A starting session's supervisor trades its start ticket for the session token, once (``protocol.TICKET``)."""
    ticket = bearer_token(request)
    token = lifecycle.redeem_ticket(ticket)
    if token is None:
        return JsonResponse({"error": "no starting session has this ticket, or it was used already"}, status=403)
    return JsonResponse({"token": token})


@csrf_exempt
@require_POST
def pages_relay(request):
    """Where the Celery worker of the embedded defaults hands the messages for the pages' sockets to this process
    (``presence.relay``); signed with the platform's secret key."""
    return HttpResponse(status=200 if presence.deliver(request.body.decode(errors="replace")) else 403)
