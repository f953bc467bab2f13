"""WebSockets of the platform's own pages. (The session proxy's WebSocket relay is in proxy.py.)"""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import permissions, presence
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


class PresenceConsumer(AsyncWebsocketConsumer):
    """Pushes the avatars of connected members to a page showing a workspace's studios, or one studio.

    On connect it sends the current avatars, so that a page misses nothing between its render and the
    connect (or while it reconnected after a restart); then each change as ``presence`` announces it.
    """

    group = None
    studio_id = None

    async def connect(self):
        route = self.scope["url_route"]["kwargs"]
        subscription = await subscribe(self.scope["user"], route)
        if subscription is None:
            await self.close()
            return
        workspace_id, fragments = subscription
        self.studio_id = int(route["studio_id"]) if "studio_id" in route else None
        self.group = presence.workspace_group(workspace_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        presence.keep_heartbeat()
        await self.send(text_data="".join(fragments))

    async def presence_changed(self, event):
        if self.studio_id in (None, event["studio"]):
            await self.send(text_data=event["html"])

    async def disconnect(self, code):
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
