"""WebSockets of the platform's own pages. (The session proxy's WebSocket relay is in proxy.py.)"""

import io

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.template.loader import render_to_string

from . import permissions, presence, views
from .models import Studio


@database_sync_to_async
def subscribe(user, route):
    """(workspace id, the current avatar fragments) for a member; None for anyone else.

    ``route`` names a workspace (the studio list) or one studio (its detail page).
    """
    if "studio_id" in route:
        studios = Studio.objects.filter(pk=route["studio_id"])
        workspace_id = studios.values_list("workspace_id", flat=True).first()
    else:
        workspace_id = int(route["workspace_id"])
        studios = Studio.objects.filter(workspace_id=workspace_id)
    if workspace_id is None or not permissions.has_role(permissions.role_of(user, workspace_id), permissions.VIEW):
        return None
    return workspace_id, [html for _, html in presence.avatar_fragments(studios)]


def page_request(scope):
    """The request of the page that opened the socket, as its fragments are rendered with: its user, its address
    (for the session links) and its CSRF cookie (for the forms of its actions)."""
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "ws"), "http")
    request = ASGIRequest({**scope, "type": "http", "method": "GET", "scheme": scheme}, io.BytesIO())
    request.user = scope["user"]
    CsrfViewMiddleware(lambda request: HttpResponse()).process_request(request)
    return request


@database_sync_to_async
def render_change(scope, workspace_id, studio_id, detail):
    """The fragment of a changed studio the page shows, for its member's role now: its status panel (``detail``)
    or its row of the list; a row that deletes itself when the studio is gone. None when the member may no
    longer see the workspace."""
    user = scope["user"]
    role = permissions.role_of(user, workspace_id)
    if not permissions.has_role(role, permissions.VIEW):
        return None
    request = page_request(scope)
    if detail:
        related = ("workspace__organization", "compute_environment", "author", "session")
        studio = Studio.objects.select_related(*related).filter(pk=studio_id).first()
        if studio is None:
            return render_to_string("studios/partials/studio_deleted.html", request=request)
        return render_to_string("studios/partials/studio_status.html", views.status_context(studio, role), request)
    studio = views.listed_studios(workspace_id).filter(pk=studio_id).first()
    if studio is None:
        return f'<tr id="studio-{int(studio_id)}" hx-swap-oob="delete"></tr>'
    return render_to_string("studios/partials/studio_row.html", {"studio": studio, "role": role}, request)


class PresenceConsumer(AsyncWebsocketConsumer):
    """Pushes what changes of a workspace's studios to a page showing them (the studio list), or one of them (its
    detail page): the avatars of connected members, and each change the lifecycle makes (``presence``).

    On connect it sends the current avatars, so that a page misses nothing between its render and the
    connect (or while it reconnected after a restart); then each change as ``presence`` announces it.
    """

    group = None
    studio_id = None
    workspace_id = None

    async def connect(self):
        route = self.scope["url_route"]["kwargs"]
        subscription = await subscribe(self.scope["user"], route)
        if subscription is None:
            await self.close()
            return
        self.workspace_id, fragments = subscription
        self.studio_id = int(route["studio_id"]) if "studio_id" in route else None
        self.group = presence.workspace_group(self.workspace_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        presence.keep_heartbeat()
        await self.send(text_data="".join(fragments))

    async def presence_changed(self, event):
        if self.studio_id in (None, event["studio"]):
            await self.send(text_data=event["html"])

    async def studio_changed(self, event):
        if self.studio_id not in (None, event["studio"]):
            return
        if event["added"] and self.studio_id is None:
            # Where a new studio goes in the list depends on the page's search, order and page: the page asks for
            # its list again when it does not show the studio yet (studios.js).
            await self.send(text_data=f'<span id="studio-added" hidden data-studio="{int(event["studio"])}"></span>')
            return
        html = await render_change(self.scope, self.workspace_id, event["studio"], detail=self.studio_id is not None)
        if html is None:
            await self.close()
        else:
            await self.send(text_data=html)

    async def disconnect(self, code):
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
