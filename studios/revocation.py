"""Revocation: whatever ends a member's access to a session closes the WebSockets they hold open to it at once.

Each proxied WebSocket listens on the channel layer in the groups of its member and of its studio (``proxy``).
What may end an access tells the groups concerned once its transaction commits: a role change or a removal from
the workspace, a deactivation, a logout (which also deletes that browser's accesses), a deletion, and a studio
leaving running (``lifecycle``, where its status changes). Each socket then checks its access again
(``origins.check_access``, the query every request runs) and closes if it ended; HTTP requests need nothing: each
is checked as it comes.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from . import presence
from .models import Membership, SessionAccess, Studio
from .origins import login_of

CHANGED = {"type": "access.changed"}


def user_group(user_id):
    return f"session-access.user.{user_id}"


def studio_group(studio_id):
    return f"session-access.studio.{studio_id}"


def tell(group):
    """After the commit, ask the sockets in ``group`` to check their access again. A channel layer that cannot be
    reached is logged: the sockets stay open, their next HTTP requests are still refused."""
    presence.send_on_commit(group, CHANGED)


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


@receiver(post_delete, sender=Studio)
def studio_deleted(sender, instance, **kwargs):
    tell(studio_group(instance.pk))
