"""The two ASGI applications, each served by processes of its own on a port of its own, each routing by ``Host``:

* ``application``, the platform: its hosts (ALLOWED_HOSTS) to Django and the presence WebSockets of its pages under
  /ws/;
* ``session_asgi.application``, the session proxy: a studio's session origin (``<prefix><id>.<session domain>``) and
  nothing else. Processes of its own (``runstudios``), so that the pages the platform renders never slow a session
  down.

Each refuses the other's hosts and any other: no platform page is served on a session origin, and no session
content on the platform's."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studios_project.settings")
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402
from django.urls import re_path  # noqa: E402

from studios import origins  # noqa: E402
from studios.consumers import PresenceConsumer  # noqa: E402

platform = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter(
                    [
                        re_path(r"^ws/workspaces/(?P<workspace_id>\d+)/presence/$", PresenceConsumer.as_asgi()),
                        re_path(r"^ws/studios/(?P<studio_id>\d+)/presence/$", PresenceConsumer.as_asgi()),
                    ]
                )
            )
        ),
    }
)


def host_of(scope):
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return value.decode("latin-1")
    return ""


async def refuse(scope, receive, send, text="Unknown host."):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close"})
        return
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


async def application(scope, receive, send):
    if scope["type"] not in ("http", "websocket"):
        await platform(scope, receive, send)
        return
    host = host_of(scope)
    if origins.studio_for_host(host) is not None:
        await refuse(scope, receive, send, "This is the platform's address: sessions are served by the session proxy.")
    elif validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
        await platform(scope, receive, send)
    else:
        await refuse(scope, receive, send)
