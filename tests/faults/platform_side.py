"""What the outage tests do on the platform's side: a process of its own with the platform's settings and its
private database, reached through PostgreSQL's Unix socket (which a test can leave open while the platform's TCP
connections are refused). It reads one JSON command per line, ``["studio", endpoint]``, and answers one JSON line.
"""

import json
import sys
from collections.abc import Callable

import django

django.setup()

from django.db import connection  # noqa: E402  (needs Django set up)
from django.test import Client  # noqa: E402

from studios import lifecycle, presence, tasks  # noqa: E402
from studios.models import Role, Studio  # noqa: E402
from tests.factories import (  # noqa: E402
    make_member,
    make_running,
    make_session_cookie,
    make_studio,
    make_workspace,
)


def studio(endpoint):
    """A running studio whose session is at ``endpoint``, in a workspace of its own, and a member with the connect
    role logged in (its session cookie)."""
    workspace = make_workspace()
    member = make_member(workspace, Role.CONNECT)
    studio = make_running(make_studio(workspace), endpoint)
    browser = Client()
    browser.force_login(member)
    return {
        "id": studio.pk,
        "list_path": workspace.get_absolute_url(),
        "member": member.username,
        "cookie": browser.cookies["sessionid"].value,
        "session_cookie": make_session_cookie(studio, member),
    }


def local_studio(work_dir):
    """A stopped JupyterLab studio on the local compute environment (its checkpoints in ``work_dir``), in a
    workspace of its own, and a member with the maintain role who starts and stops it."""
    workspace = make_workspace(work_dir=work_dir)
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, author=maintainer, cpus=1, memory_mb=1024)
    browser = Client()
    browser.force_login(maintainer)
    return {"id": studio.pk, "cookie": browser.cookies["sessionid"].value}


def act(action, studio_id):
    """Start or stop a studio as its author does, through the lifecycle (its tasks go to the broker)."""
    studio = Studio.objects.get(pk=studio_id)
    getattr(lifecycle, f"{action}_studio")(studio.author, studio)
    return state(studio_id)


def state(studio_id):
    """The studio's status and reason, and what the platform knows of its latest session."""
    studio = Studio.objects.select_related("session__checkpoint").get(pk=studio_id)
    session = studio.session
    return {
        "status": studio.status,
        "reason": studio.status_reason,
        "session": session
        and {
            "id": session.pk,
            "handle": session.handle,
            "launched": session.launched,
            "ended": bool(session.ended),
            "steps": session.steps,
            "checkpoint_error": session.checkpoint_error,
            "checkpoint": session.checkpoint and session.checkpoint.state,
            "manifest": session.checkpoint and session.checkpoint.manifest_key,
        },
    }


def forget():
    """What the reconcile task does for presence: the studios whose connections were forgotten."""
    return sorted(presence.forget_dead_processes())


def forget_studio(studio_id):
    """An operator deletes a studio's row (in the admin, or by restoring an older database) while it runs."""
    return Studio.objects.filter(pk=studio_id).delete()[0]


def checkpoint(session_id):
    """What the beat's five-minute tick does for one running session: ask its supervisor for a checkpoint."""
    tasks.checkpoint_session(session_id)
    return state(Studio.objects.get(session=session_id).pk)


COMMANDS: dict[str, Callable] = {
    "studio": studio,
    "forget": forget,
    "local_studio": local_studio,
    "act": act,
    "state": state,
    "checkpoint": checkpoint,
    "forget_studio": forget_studio,
}

if __name__ == "__main__":
    for line in sys.stdin:
        name, *arguments = json.loads(line)
        try:
            print(json.dumps(COMMANDS[name](*arguments)), flush=True)
        finally:
            connection.close()  # the next command may come after a restart of the database
