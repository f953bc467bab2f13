"""Revocation: whatever ends a member's access to a session closes the WebSockets they hold open to it at once.

What may end an access tells the groups of the member and of the studio concerned, on the channel layer, once
its transaction commits: a role change or a removal from the workspace, a deactivation, a logout (which also
deletes that browser's accesses), a deletion, and a studio's session ending (``lifecycle``, where its status
changes: a stopping session stays open to the members in it until it has ended, for its pages to save their
documents). Each process that serves session origins listens once in the groups it has decisions or sockets for
(``Decisions``): on an announcement it forgets the access decisions it kept, so that the next request asks the
database again, and each open WebSocket of that group checks its access again (``origins.check_access``) and
closes if it ended.
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from . import origins, presence
from .exceptions import DATABASE_OUTAGES
from .models import Membership, SessionAccess, Studio
from .origins import login_of

log = logging.getLogger(__name__)


def user_group(user_id):
    return f"session-access.user.{user_id}"


def studio_group(studio_id):
    return f"session-access.studio.{studio_id}"


def tell(group):
    """After the commit, ask the sockets in ``group`` to check their access again. A channel layer that cannot be
    reached is logged: the sockets stay open, their next HTTP requests are still refused."""
    presence.send_on_commit(group, {"type": "access.changed", "group": group})


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


check_access = database_sync_to_async(origins.check_access)

# How long a decision is kept at most when no announcement comes: a safety net for announcements lost on the way.
KEPT_SECONDS = 60.0
# The in-memory channel layer (the embedded run without Redis) hears only this process's announcements, never the
# web process's or the worker's: there a decision is kept no longer than the issue allows a cache to trust one, and
# the access of open WebSockets is asked again this often (``ask_again``).
KEPT_SECONDS_IN_MEMORY = 1.0
ASK_AGAIN_SECONDS_IN_MEMORY = 0.5
# channels_redis forgets group members after a day (its group_expiry): join again well before.
JOIN_AGAIN_SECONDS = 3600.0
KEPT_AT_MOST = 10_000


class Decisions:
    """The access decisions of this process and its open session WebSockets, kept up to date by announcements.

    A request on a session origin asks ``check``: an allowing decision is kept (no database round trip for the
    next requests with the same cookie) once this process listens in the groups of its member and its studio, and
    forgotten at the next announcement in any group it listens in. Tied to the event loop it first ran on (the
    channel layer is); a new loop (a test's new server) starts afresh.
    """

    def __init__(self):
        self.loop = None

    def _bind(self):
        loop = asyncio.get_running_loop()
        if loop is self.loop:
            return
        self.loop = loop
        self.layer = get_channel_layer()
        self.in_memory = isinstance(self.layer, InMemoryChannelLayer)
        self.kept_seconds = KEPT_SECONDS_IN_MEMORY if self.in_memory else KEPT_SECONDS
        self.channel = None
        self.listener = None
        self.joined: dict[str, float] = {}  # group -> when this process joined it (monotonic seconds)
        self.kept: dict[tuple, tuple] = {}  # (access key, studio id) -> (Access, when kept)
        self.sockets: dict[str, set] = {}  # group -> callbacks of the open WebSockets that depend on it
        self.generation = 0  # announcements heard so far: a decision read before one is not kept
        self.tasks: set[asyncio.Task] = set()
        self.asking: dict[tuple, set] = {}  # (access key, studio id) -> ``ended`` of its open WebSockets (in memory)

    async def check(self, key, studio_id):
        """``origins.check_access`` for the cookie's access key on the studio, from what this process keeps when it
        can."""
        self._bind()
        now = time.monotonic()
        kept = self.kept.get((key, studio_id))
        if kept is not None and now - kept[1] < self.kept_seconds:
            return kept[0]
        generation = self.generation
        access = await check_access(key, studio_id)
        if access.status != 200:
            return access
        groups = (user_group(access.user.pk), studio_group(studio_id))
        if not self._listening(groups):
            if not await self._join(groups):
                return access
            # A change announced before the joining went unheard: read it again.
            generation = self.generation
            access = await check_access(key, studio_id)
        if access.status == 200 and generation == self.generation:
            if len(self.kept) >= KEPT_AT_MOST:
                self.kept.clear()
            self.kept[(key, studio_id)] = (access, now)
        return access

    async def watch(self, groups, changed):
        """Call ``changed`` (a coroutine function) at each announcement in ``groups`` until ``forget``; whether
        this process listens in them (a channel layer that cannot be reached leaves the socket unwatched)."""
        self._bind()
        if not self._listening(groups) and not await self._join(groups):
            return False
        for group in groups:
            self.sockets.setdefault(group, set()).add(changed)
        return True

    def ask_again(self, key, studio_id, ended):
        """For the in-memory channel layer, which hears no announcement of the platform's processes: call ``ended``
        once the access ends, asking the database every ``ASK_AGAIN_SECONDS_IN_MEMORY`` once for all the open
        WebSockets of that access (a page holds several)."""
        self._bind()
        sockets = self.asking.get((key, studio_id))
        if sockets is None:
            sockets = self.asking[(key, studio_id)] = set()
            task = asyncio.create_task(self._ask_again(key, studio_id, sockets))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        sockets.add(ended)

    def stop_asking(self, key, studio_id, ended):
        sockets = self.asking.get((key, studio_id))
        if sockets is not None:
            sockets.discard(ended)
            if not sockets:
                del self.asking[(key, studio_id)]

    async def _ask_again(self, key, studio_id, sockets: set) -> None:
        while self.asking.get((key, studio_id)) is sockets:
            await asyncio.sleep(ASK_AGAIN_SECONDS_IN_MEMORY)
            try:
                access = await check_access(key, studio_id)
            except DATABASE_OUTAGES:
                log.exception("cannot check again the access to studio %s's sockets", studio_id)
                continue
            if access.status != 200:
                for ended in list(sockets):
                    ended()

    def forget(self, groups, changed):
        for group in groups:
            callbacks = self.sockets.get(group, set())
            callbacks.discard(changed)
            if not callbacks:
                self.sockets.pop(group, None)

    def _listening(self, groups):
        now = time.monotonic()
        return self.channel is not None and all(
            now - self.joined.get(group, -JOIN_AGAIN_SECONDS) < JOIN_AGAIN_SECONDS for group in groups
        )

    async def _join(self, groups):
        try:
            if self.channel is None:
                self.channel = await self.layer.new_channel()
                self.listener = asyncio.create_task(self._listen())
            for group in groups:
                await self.layer.group_add(group, self.channel)
                self.joined[group] = time.monotonic()
        except Exception:
            log.exception("cannot listen for changes of session access")
            return False
        return True

    async def _listen(self):
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except Exception:
                # Announcements may have been missed: trust nothing kept, join again before keeping anything.
                log.exception("listening for changes of session access failed; retrying")
                self.generation += 1
                self.kept.clear()
                self.joined.clear()
                await asyncio.sleep(1)
                await self._join(list(self.sockets))
                continue
            self.generation += 1
            self.kept.clear()
            for changed in list(self.sockets.get(message.get("group"), ())):
                task = asyncio.create_task(changed())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)


decisions = Decisions()
