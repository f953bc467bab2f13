"""What the outage tests do on the platform's side: a process of its own with the platform's settings and its
private database, reached through PostgreSQL's Unix socket (which a test can leave open while the platform's TCP
connections are refused). It reads one JSON command per line, ``["studio", endpoint]``, and answers one JSON line.
"""

import json
import sys

import django

django.setup()

from django.db import connection  # noqa: E402  (needs Django set up)
from django.test import Client  # noqa: E402

from studios import presence  # noqa: E402
from studios.models import Role  # noqa: E402
from tests.factories import make_member, make_running, make_studio, make_workspace  # noqa: E402


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
        "connect_path": studio.connect_path,
        "list_path": workspace.get_absolute_url(),
        "member": member.username,
        "cookie": browser.cookies["sessionid"].value,
    }


def forget():
    """What the reconcile task does for presence: the studios whose connections were forgotten."""
    return sorted(presence.forget_dead_processes())


COMMANDS = {"studio": studio, "forget": forget}

if __name__ == "__main__":
    for line in sys.stdin:
        name, *arguments = json.loads(line)
        try:
            print(json.dumps(COMMANDS[name](*arguments)), flush=True)
        finally:
            connection.close()  # the next command may come after a restart of the database
