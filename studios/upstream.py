"""The connect proxy's HTTP/1.1 client to sessions: kept-alive connections per endpoint, each an asyncio protocol
fed to httptools' parser (llhttp, the C parser uvicorn serves with), headers kept as the bytes they arrive as.

``forwarding``'s httpcore client (which the session's gate shares) runs h11, its request and response models and
its pool's locks in Python for every request: on the proxy's hot path that cost more than everything else the
proxy does (bench/README.md). Bodies stream both ways without buffering more than ``HIGH_WATER``.
"""

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

CONNECT_SECONDS = 30.0
# An idle connection is used again only this soon: the session's gate (uvicorn) closes its own after 5 s.
IDLE_SECONDS = 4.0
IDLE_KEPT = 32  # idle connections kept per endpoint
# A response body buffered beyond this pauses reading from the session until the browser has taken it.
HIGH_WATER = 1 << 20


class Unreachable(Exception):
    """The session could not be reached, or it closed the connection before it answered."""


class Connection(asyncio.Protocol):
    """One connection to a session's endpoint, carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.writable: asyncio.Future[None] | None = None
        self.begin(False)

    def begin(self, head_only: bool) -> None:
        """Get ready for the answer to a new request (``head_only``: a HEAD's, which has no body)."""
        self.head_only = head_only
        self.informational = False
        self.status = 0
        self.headers: RawHeaders = []
        self.answered: asyncio.Future[None] = self.loop.create_future()
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    # asyncio's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self.fail(error)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self.answered.done():
            self.complete = True  # a body that ends with the connection
            self.wake()
        else:
            self.fail(exc or ConnectionResetError("the session closed the connection"))
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    # httptools' parser

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and its like: the answer follows
            self.informational = True
            self.headers = []
            return
        self.status = status
        self.answered.set_result(None)
        if self.head_only:
            self.complete = True  # the parser does not know a HEAD's answer has no body: never reuse this one

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self.wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # the parser forgets once the message is done
        self.wake()

    # the proxy's side

    def fail(self, error: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = error
            if not self.answered.done():
                self.answered.set_exception(Unreachable(str(error)))
                self.answered.exception()  # retrieved here: nobody may be waiting
            self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise Unreachable("the session closed the connection")
        self.transport.write(data)
        if self.writable is not None:
            await self.writable

    async def chunk(self) -> bytes:
        """The next part of the answer's body; b"" at its end."""
        while not self.body:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            await self.waiter
        chunk = b"".join(self.body) if len(self.body) > 1 else self.body[0]
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return self.keep_alive and not self.closed and not self.head_only

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Kept-alive connections to sessions' endpoints (``http://host:port``), most recently used first."""

    def __init__(self) -> None:
        self.idle: dict[str, deque[Connection]] = {}
        self.addresses: dict[str, tuple[str, int]] = {}

    async def connection(self, endpoint: str) -> tuple[Connection, bool]:
        """A connection to ``endpoint``, and whether it was kept from an earlier request."""
        idle = self.idle.get(endpoint)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_SECONDS and connection.loop is loop:
                return connection, True
            if connection.loop is loop:
                connection.close()
        address = self.addresses.get(endpoint)
        if address is None:
            parts = urlsplit(endpoint)
            address = self.addresses[endpoint] = (parts.hostname or "", parts.port or 80)
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(loop), *address), CONNECT_SECONDS
            )
        except (OSError, TimeoutError) as error:
            raise Unreachable(str(error)) from error
        return connection, False

    def release(self, endpoint: str, connection: Connection) -> None:
        if not connection.reusable():
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle = self.idle.setdefault(endpoint, deque())
        idle.append(connection)
        if len(idle) > IDLE_KEPT:
            idle.popleft().close()


async def _send_body(connection: Connection, receive: Receive, chunked: bool) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Unreachable("the browser went away")
        body = message.get("body", b"")
        if body:
            await connection.write(b"%x\r\n%s\r\n" % (len(body), body) if chunked else body)
        if not message.get("more_body"):
            break
    if chunked:
        await connection.write(b"0\r\n\r\n")


async def forward(
    pool: Pool,
    endpoint: str,
    scope: Message,
    target: bytes,
    headers: RawHeaders,
    receive: Receive,
    send: Send,
    answer_headers: Callable[[RawHeaders], RawHeaders],
) -> bool:
    """Stream the request (``target``: its path and query; ``headers``: those to send, Host included) to the
    session at ``endpoint`` and its answer back, with the headers ``answer_headers`` makes of the session's.
    Returns False, having sent nothing, when the session cannot be reached or closes before it answers.

    A request without a body whose kept-alive connection the session had closed meanwhile is sent again on a new
    one (the session never saw it)."""
    method: str = scope["method"]
    has_body = method not in ("GET", "HEAD")
    chunked = has_body and not any(name.lower() == b"content-length" for name, _value in headers)
    head = b"".join(
        [
            method.encode("latin-1"),
            b" ",
            target,
            b" HTTP/1.1\r\n",
            *(b"%s: %s\r\n" % pair for pair in headers),
            b"transfer-encoding: chunked\r\n\r\n" if chunked else b"\r\n",
        ]
    )
    for attempt in (1, 2):
        try:
            connection, kept = await pool.connection(endpoint)
        except Unreachable:
            return False
        connection.begin(method == "HEAD")
        try:
            await connection.write(head)
            if has_body:
                await _send_body(connection, receive, chunked)
            await connection.answered
            break
        except Unreachable:
            connection.close()
            if not (kept and not has_body and attempt == 1):
                return False
    try:
        await send(
            {"type": "http.response.start", "status": connection.status, "headers": answer_headers(connection.headers)}
        )
        while chunk := await connection.chunk():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        pool.release(endpoint, connection)
    return True
