"""Revocation: whatever ends a member's access to a session closes the WebSockets they hold open to it at once.

Each proxied WebSocket listens on the channel layer in the groups of its member and of its studio (``proxy``).
What may end an access tells the groups concerned once its transaction commits: a role change or a removal from
the workspace, a deactivation, a logout (which also deletes that browser's accesses), a stop or a deletion. Each
socket then checks its access again (``origins.check_access``, the query every request runs) and closes if it
ended; HTTP requests need nothing: each is checked as it comes.
"""

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import Membership, SessionAccess, Studio, StudioStatus
from .origins import login_of

log = logging.getLogger(__name__)

CHANGED = {"type": "access.changed"}
_sending: set[asyncio.Task] = set()  # announcements scheduled on a caller's event loop, kept until they are sent


def user_group(user_id):
    return f"session-access.user.{user_id}"


def studio_group(studio_id):
    return f"session-access.studio.{studio_id}"


def tell(group):
    """After the commit, ask the sockets in ``group`` to check their access again. A channel layer that cannot be
    reached is logged: the sockets stay open, their next HTTP requests are still refused."""

    async def send():
        try:
            await get_channel_layer().group_send(group, CHANGED)
        except Exception:
            log.exception("could not tell %s that access changed", group)

    def send_now():
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            async_to_sync(send)()
        else:  # a caller that runs an event loop in its own thread (Playwright's, in the browser tests)
            task = loop.create_task(send())
            _sending.add(task)
            task.add_done_callback(_sending.discard)

    transaction.on_commit(send_now)


@receiver(post_save, sender=Membership)
@receiver(post_delete, sender=Membership)
def membership_changed(sender, instance, **kwargs):
    tell(user_group(instance.user_id))


@receiver(post_save, sender=get_user_model())
def user_changed(sender, instance, update_fields=None, **kwargs):
    if not instance.is_active and update_fields != frozenset({"last_login"}):
        tell(user_group(instance.pk))


@receiver(user_logged_out)
def logged_out(sender, request, user, **kwargs):
    """The browser's accesses end with its platform login."""
    if user is None or request.session.session_key is None:
        return
    SessionAccess.objects.filter(login=login_of(request)).delete()
    tell(user_group(user.pk))


@receiver(post_save, sender=Studio)
def studio_changed(sender, instance, **kwargs):
    if instance.status != StudioStatus.RUNNING:
        tell(studio_group(instance.pk))


@receiver(post_delete, sender=Studio)
def studio_deleted(sender, instance, **kwargs):
    tell(studio_group(instance.pk))
