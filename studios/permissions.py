"""The role table of SPEC section 1, checked on the server for every page, action and proxied request."""

from django.db.models import OuterRef, Subquery
from django.http import Http404

from .exceptions import RoleTooLow
from .models import Membership, Role, Studio, Workspace

# The lowest role allowed to do each kind of thing.
VIEW = Role.VIEW
CONNECT = Role.CONNECT
MAINTAIN = Role.MAINTAIN
ADMIN = Role.ADMIN

# What each role may do, as the pages explain it (the table above each check, in words).
ROLE_SUMMARIES = {
    Role.OWNER: "everything an admin may do, as the workspace's owner",
    Role.ADMIN: "manage compute environments and datasets, and everything a maintainer may do",
    Role.MAINTAIN: "add, start, stop and delete studios, rename checkpoints, and connect",
    Role.LAUNCH: (
        "connect to running studios and copy their links, as connect does: launch adds nothing yet "
        "(starting studios needs maintain)"
    ),
    Role.CONNECT: "connect to running studios and copy their links",
    Role.VIEW: "see the studios, their checkpoints and activity",
}


def role_of(user, workspace):
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, workspace=workspace).values_list("role", flat=True).first()


def has_role(role, lowest):
    return role is not None and Role.rank(role) >= Role.rank(lowest)


def studio_actions(role, studio):
    """The actions the pages offer this role on this studio in its status. The server checks each again."""
    actions = []
    if has_role(role, CONNECT) and studio.can_connect:
        actions += ["connect", "copy-url"]
    if has_role(role, MAINTAIN):
        allowed = {
            "start": studio.can_start,
            "stop": studio.can_stop,
            "extend": studio.stops_at is not None,
            "force-stop": studio.can_force_stop,
            "delete": studio.can_delete,
        }
        actions += [action for action, possible in allowed.items() if possible]
    return actions


def require_role(user, workspace, lowest, action):
    """Raise Http404 for non-members (nothing confirms the workspace exists), RoleTooLow (a 403) for low roles."""
    role = role_of(user, workspace)
    if role is None:
        raise Http404("No such workspace")
    if not has_role(role, lowest):
        raise RoleTooLow(f"You need the {lowest} role or higher to {action}; your role is {role}.")
    return role


def workspace_for(user, org_slug, workspace_slug):
    workspace = (
        Workspace.objects.select_related("organization")
        .filter(organization__slug=org_slug, slug=workspace_slug)
        .first()
    )
    role = role_of(user, workspace) if workspace else None
    if role is None:
        raise Http404("No such workspace")
    return workspace, role


def studio_with_role(user, studio_id, related=()):
    """The studio annotated with ``role``, the user's role in its workspace (None for non-members), in one query."""
    role = Membership.objects.filter(workspace=OuterRef("workspace"), user=user.pk).values("role")[:1]
    studios = Studio.objects.select_related(*related) if related else Studio.objects.all()
    return studios.annotate(role=Subquery(role)).filter(pk=studio_id).first()


def studio_for(user, studio_id):
    """The studio and the user's role in its workspace, or Http404 for non-members and unknown ids."""
    studio = studio_with_role(user, studio_id, ("workspace__organization", "compute_environment", "author", "session"))
    if studio is None or studio.role is None:
        raise Http404("No such studio")
    return studio, studio.role
