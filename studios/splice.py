"""uvicorn's WebSocket protocol for the session proxy: the browser's handshake passes through to the session, and
the bytes after it are spliced both ways, as configurable-http-proxy does, instead of each side's frames being
parsed, copied and written again (``--ws studios.splice:WebSocketSplice``; README, Deploying).

The ASGI application still decides everything, with these messages on a ``websocket`` scope whose extensions name
``websocket.splice`` (and ``websocket.http.response``, to refuse with a status):

* receive ``websocket.connect``; then either refuse (``websocket.http.response.*``, or ``websocket.close`` for 403)
  or send ``websocket.splice`` with ``host``, ``port``, ``target`` and ``headers``: the handshake as the upstream
  gets it (this protocol adds ``Connection`` and ``Upgrade``), and ``used_every`` (seconds, see below);
* receive ``websocket.splice.answer`` with the upstream's ``status`` and ``headers`` (``status`` None when it cannot
  be reached or does not answer in ``ANSWER_SECONDS``); then either refuse, or send ``websocket.accept`` with the
  ``headers`` the browser gets in the 101 (the upstream's ``Sec-WebSocket-Accept`` among them), which starts the
  splice;
* receive ``websocket.splice.used`` (at most once per ``used_every`` seconds) while the browser sends data frames
  (not its pongs), and ``websocket.disconnect`` when either side has gone;
* send ``websocket.close`` with a ``code`` to end a spliced socket: the browser gets that close frame once the
  session's frame under way has passed (``BOUNDARY_SECONDS`` at most, else the connection is cut), and the session's
  connection is closed.

Frames are told apart by their headers only (RFC 6455 section 5.2); payloads pass untouched.
"""

import asyncio
import logging
import struct
import time
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

log = logging.getLogger(__name__)

UVICORN_WS = "studios.splice:WebSocketSplice"  # uvicorn's --ws for it

ANSWER_SECONDS = 10.0  # to connect to the upstream and read its answer to the handshake
BOUNDARY_SECONDS = 0.5  # for the session's frame under way to pass before a close of the proxy's own
HEAD_LIMIT = 64 * 1024  # the upstream's answer to the handshake
DATA_OPCODES = {0x0, 0x1, 0x2}  # continuation, text, binary; not close, ping nor pong
CLOSE_OPCODE = 0x8


class Frames:
    """Where frames begin and end in one direction's bytes, from their headers."""

    def __init__(self) -> None:
        self.left = 0  # payload bytes of the current frame still to come
        self.head = b""  # a header begun and not yet whole
        self.data = False  # whether a data frame began since the last look
        self.closed = False  # whether a close frame went by

    def at_boundary(self) -> bool:
        return not self.left and not self.head

    def feed(self, data: bytes, stop_at_boundary: bool = False) -> int:
        """Follow ``data``'s frames; how many of its bytes were followed: all of them, or with
        ``stop_at_boundary``, those up to the first point between two frames."""
        position = 0
        while position < len(data):
            if stop_at_boundary and self.at_boundary():
                return position
            if self.left:
                step = min(self.left, len(data) - position)
                self.left -= step
                position += step
                continue
            taken = self.read_head(data, position)
            position += taken
        return position

    def read_head(self, data: bytes, position: int) -> int:
        """Read the frame header begun in ``self.head`` and going on at ``data[position:]``; how many bytes of
        ``data`` it took."""
        head = self.head + data[position : position + 14]
        size = header_size(head)
        if size is None or len(head) < size:
            taken = len(head) - len(self.head)
            self.head = head
            return taken
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack_from("!H", head, 2)
        elif length == 127:
            (length,) = struct.unpack_from("!Q", head, 2)
        opcode = head[0] & 0x0F
        self.data = self.data or opcode in DATA_OPCODES
        self.closed = self.closed or opcode == CLOSE_OPCODE
        taken = size - len(self.head)
        self.head, self.left = b"", length
        return taken


def header_size(head: bytes) -> int | None:
    """A frame header's length, from its first two bytes (None before both are there)."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def close_frame(code: int) -> bytes:
    """A server's close frame (unmasked) with ``code`` and no reason."""
    return bytes((0x80 | CLOSE_OPCODE, 2)) + struct.pack("!H", code)


def http_head(first_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return first_line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``http_head``'s reverse (without its blank line): the first line, and the headers with lowercase names."""
    first_line, *lines = head.split(b"\r\n")
    return first_line, [
        (name.strip().lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)
    ]


class Upstream(asyncio.Protocol):
    """The session's side of a splice."""

    def __init__(self, splice: "WebSocketSplice") -> None:
        self.splice = splice

    def data_received(self, data: bytes) -> None:
        self.splice.from_upstream(data)

    def eof_received(self) -> bool:
        return False  # close: a WebSocket half-closed is over

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.upstream_lost()

    def pause_writing(self) -> None:
        self.splice.transport.pause_reading()

    def resume_writing(self) -> None:
        self.splice.transport.resume_reading()


class WebSocketSplice(asyncio.Protocol):
    """One browser's WebSocket, from the handshake uvicorn hands over to the end of both connections."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any]) -> None:
        self.config, self.app_state = config, app_state
        self.connections, self.tasks = server_state.connections, server_state.tasks
        self.loop = asyncio.get_running_loop()
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.transport: asyncio.Transport
        self.upstream: asyncio.Transport | None = None
        self.answer = b""  # the upstream's answer to the handshake, until it is whole
        self.waiting: asyncio.TimerHandle | None = None
        self.cutting: asyncio.TimerHandle | None = None
        self.spliced = False
        self.ending = False  # a close of the proxy's own is on its way
        self.gone = False
        self.early = b""  # browser bytes before the splice
        self.from_browser, self.to_browser = Frames(), Frames()
        self.used_at = 0.0
        self.used_every = 0.0
        self.response: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.body = b""
        self.code = 1000  # of the close of the proxy's own
        self.scope: dict[str, Any] | None = None

    # The browser's connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.scope is None:
            self.begin(data)
        elif self.ending:
            return
        elif self.spliced and self.upstream is not None:
            self.upstream.write(data)
            self.from_browser.feed(data)
            if self.from_browser.data:
                self.from_browser.data = False
                now = time.monotonic()
                if now - self.used_at >= self.used_every:
                    self.used_at = now
                    self.messages.put_nowait({"type": "websocket.splice.used"})
        else:
            self.early += data
            if len(self.early) > HEAD_LIMIT:  # a browser sends nothing before the answer to its handshake
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.upstream is not None:
            self.upstream.close()
        self.disconnected()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def shutdown(self) -> None:
        """The server is stopping: the browser is told the session proxy went away."""
        if self.spliced:
            self.end(1001)
        else:
            self.transport.close()

    def begin(self, data: bytes) -> None:
        """The handshake, as uvicorn wrote it again from what it parsed: the ASGI scope, and the application run."""
        head, _, self.early = data.partition(b"\r\n\r\n")
        request_line, headers = parse_head(head)
        url = request_line.split(b" ")[1]
        raw_path, _, query = url.partition(b"?")
        protocols = b",".join(value for name, value in headers if name == b"sec-websocket-protocol")
        scope = self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(self.transport) else "ws",
            "server": get_local_addr(self.transport),
            "client": get_remote_addr(self.transport),
            "root_path": self.config.root_path,
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "headers": headers,
            "subprotocols": [p.strip() for p in protocols.decode("latin-1").split(",") if p.strip()],
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}, "websocket.splice": {}},
        }
        self.messages.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run(scope))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, scope: dict[str, Any]) -> None:
        try:
            await self.config.loaded_app(scope, self.messages.get, self.send)
        except Exception:
            log.exception("Exception in the session proxy's WebSocket application")
        finally:
            if not self.ending:
                self.transport.close()
                if self.upstream is not None:
                    self.upstream.close()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.gone or self.ending:
            return
        if kind == "websocket.splice":
            await self.connect(message)
        elif kind == "websocket.accept":
            self.accept(message.get("headers", []))
        elif kind == "websocket.close":
            if self.spliced:
                self.end(message.get("code", 1000))
            else:
                self.respond(403, [], b"")
        elif kind == "websocket.http.response.start":
            self.response = (message["status"], list(message.get("headers", [])))
        elif kind == "websocket.http.response.body" and self.response is not None:
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                self.respond(*self.response, self.body)
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} on a spliced WebSocket.")

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Refuse the handshake with an HTTP answer."""
        headers = [*headers, (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        status_line = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()
        self.transport.write(http_head(status_line, headers) + body)
        self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    # The upstream's connection

    async def connect(self, message: dict[str, Any]) -> None:
        """Open the upstream and send it the handshake; its answer comes as ``websocket.splice.answer``."""
        self.used_every = message.get("used_every", 0.0)
        self.waiting = self.loop.call_later(ANSWER_SECONDS, self.no_answer)
        try:
            self.upstream, _ = await self.loop.create_connection(
                lambda: Upstream(self), message["host"], message["port"]
            )
        except OSError:
            self.no_answer()
            return
        if self.gone:
            self.upstream.close()
            return
        headers = [*message["headers"], (b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
        self.upstream.write(http_head(b"GET " + message["target"] + b" HTTP/1.1", headers))

    def no_answer(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
            self.messages.put_nowait({"type": "websocket.splice.answer", "status": None, "headers": []})
            if self.upstream is not None:
                self.upstream.close()

    def from_upstream(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.spliced:
            if self.ending:
                followed = self.to_browser.feed(data, stop_at_boundary=True)
                self.transport.write(data[:followed])
                if self.to_browser.at_boundary():
                    self.close_now()
                return
            self.transport.write(data)
            self.to_browser.feed(data)
            return
        if self.waiting is None:
            return  # the answer came too late
        self.answer += data
        head, found, rest = self.answer.partition(b"\r\n\r\n")
        if not found:
            if len(self.answer) > HEAD_LIMIT:
                self.no_answer()
            return
        self.waiting.cancel()
        self.waiting = None
        status_line, headers = parse_head(head)
        parts = status_line.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        self.answer = rest
        self.messages.put_nowait({"type": "websocket.splice.answer", "status": status, "headers": headers})

    def accept(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Answer the browser's handshake with the upstream's, then pass bytes both ways."""
        assert self.upstream is not None
        if self.upstream.is_closing():  # it went away after its answer
            self.transport.close()
            return
        headers = [*headers, (b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
        self.transport.write(http_head(b"HTTP/1.1 101 Switching Protocols", headers))
        self.spliced = True
        rest, self.answer = self.answer, b""
        if rest:
            self.from_upstream(rest)
        early, self.early = self.early, b""
        if early:
            self.data_received(early)
        self.transport.resume_reading()

    def upstream_lost(self) -> None:
        if self.ending:
            self.close_now()
        elif self.spliced:
            self.transport.close()
        else:
            self.no_answer()  # the application answers the browser

    # The end

    def end(self, code: int) -> None:
        """Close the browser's side with ``code`` at the next boundary between the session's frames."""
        self.ending = True
        self.code = code
        self.transport.pause_reading()
        if self.to_browser.at_boundary():
            self.close_now()
        else:
            self.cutting = self.loop.call_later(BOUNDARY_SECONDS, self.cut)

    def close_now(self) -> None:
        if self.cutting is not None:
            self.cutting.cancel()
        if not self.transport.is_closing():
            self.transport.write(close_frame(self.code))
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def cut(self) -> None:
        self.transport.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def disconnected(self) -> None:
        if not self.gone:
            self.gone = True
            closed = self.from_browser.closed or self.to_browser.closed
            self.messages.put_nowait({"type": "websocket.disconnect", "code": 1000 if closed else 1006})
