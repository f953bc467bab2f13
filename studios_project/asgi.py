"""ASGI routing: Django for pages, the session proxy for everything under /studios/<id>/connect/, and the
presence WebSockets of the pages under /ws/."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studios_project.settings")
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from studios.consumers import PresenceConsumer  # noqa: E402
from studios.proxy import SessionHTTPProxy, SessionWebSocketProxy, outage_answered  # noqa: E402

CONNECT_PATH = r"^studios/(?P<studio_id>\d+)/connect/"

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                re_path(CONNECT_PATH, outage_answered(AuthMiddlewareStack(SessionHTTPProxy()))),
                re_path(r"", django_application),
            ]
        ),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter(
                    [
                        re_path(CONNECT_PATH, SessionWebSocketProxy()),
                        re_path(r"^ws/workspaces/(?P<workspace_id>\d+)/presence/$", PresenceConsumer.as_asgi()),
                        re_path(r"^ws/studios/(?P<studio_id>\d+)/presence/$", PresenceConsumer.as_asgi()),
                    ]
                )
            )
        ),
    }
)
