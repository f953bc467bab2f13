"""Notices for the session's pages: what the platform tells the members working in the session (a stop, with who made
it and why; a warning of an automatic stop), passed from the supervisor's threads to the pages' WebSockets, which the
gate serves itself at ``protocol.NOTICES_PATH``. JupyterLab's pages listen there (the image's extension,
images/jupyterlab/notices).

A stop asks every page open at the time to save its open documents, one page after the other: two pages saving the
same file at once would interleave their writes into one file that is neither (JupyterLab's server rewrites a file in
place), and one after the other the second page sees the first's save and does not overwrite it. It waits a bounded
while in all for their answers; pages whose turn did not come by then are told all the same. A page is the session's
to write (its script comes from the IDE, whose files code in the session may change): of what
it says, only "saved" or "not saved" is read, and only to say so in the stop's record. Nothing in a notice is secret:
the members who see it may see who stopped their studio and why.
"""

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# What a page may answer: {"saved": true} or {"saved": false}; anything longer is not an answer.
ANSWER_MAX_LENGTH = 100


@dataclass(eq=False)
class Page:
    """One open page's WebSocket: the notices waiting to be sent to it, in its gate's event loop, and its answer to
    the stop it was told of (None until it answers)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    told_to_save: bool = False
    saved: bool | None = None

    def has_answered(self) -> bool:
        return self.saved is not None


class Notices:
    def __init__(self) -> None:
        self.changed = threading.Condition()  # guards the pages and their answers
        self.pages: list[Page] = []  # in the order they opened, the order they take their turns to save
        self.stop: Message | None = None  # once the session stops: told to every page, later ones too

    def warn(self, message: str, link: str) -> None:
        """Tell the pages open now of an automatic stop ahead (a page opened later does not hear of it: by then it
        may have been extended)."""
        with self.changed:
            for page in self.pages:
                page.loop.call_soon_threadsafe(
                    page.queue.put_nowait, {"kind": "warning", "message": message, "link": link}
                )

    def save_pages(self, message: str, link: str, seconds: float) -> tuple[int, int]:
        """Tell the pages open now, one after the other, that the session stops, and why, each one once the one before
        has saved its documents, all within ``seconds``; tell the pages left when time is up all at once. How many
        said they saved, and how many did not (or said nothing in time, or closed)."""
        deadline = time.monotonic() + seconds
        with self.changed:
            self.stop = {"kind": "stop", "message": message, "link": link, "seconds": seconds}
            told = list(self.pages)
            for page in told:
                page.told_to_save = True
                page.loop.call_soon_threadsafe(page.queue.put_nowait, self.stop)
                self.changed.wait_for(page.has_answered, timeout=max(0.0, deadline - time.monotonic()))
            saved = sum(1 for page in told if page.saved)
        return saved, len(told) - saved

    async def serve(self, receive: Receive, send: Send) -> None:
        """One page's WebSocket, as an ASGI application: the notices go out, its answer to a stop comes in."""
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        page = Page(asyncio.get_running_loop())
        with self.changed:
            self.pages.append(page)
            if self.stop is not None:
                page.queue.put_nowait(self.stop)
        sending = asyncio.create_task(self.send_notices(page, send))
        try:
            while (message := await receive())["type"] == "websocket.receive":
                self.answered(page, message.get("text"))
        finally:
            sending.cancel()
            with self.changed:
                self.pages.remove(page)
                if page.told_to_save and not page.has_answered():
                    page.saved = False  # closed without saying it saved
                self.changed.notify_all()

    async def send_notices(self, page: Page, send: Send) -> None:
        # A page that went away mid-send: its receiving side sees the disconnect and tidies up.
        with contextlib.suppress(OSError):
            while True:
                await send({"type": "websocket.send", "text": json.dumps(await page.queue.get())})

    def answered(self, page: Page, text: object) -> None:
        """A page's answer to the stop it was told of, the first only: saved, or not."""
        if not isinstance(text, str) or len(text) > ANSWER_MAX_LENGTH:
            return
        try:
            answer = json.loads(text)
        except ValueError:
            return
        with self.changed:
            if page.told_to_save and not page.has_answered() and isinstance(answer, dict) and "saved" in answer:
                page.saved = answer["saved"] is True
                self.changed.notify_all()
