"""The gate: the session's front door, run by the supervisor outside the sandbox.

No IDE inside a sandbox can keep a secret (whatever it holds, code in the session can read), so none is
given the session token: the gate checks it instead. Every request and WebSocket must carry the token the
platform's proxy adds (anything else gets 403); the token is taken off, the proxy's path prefix is
stripped for IDEs that expect to be served at ``/``, and the rest is streamed to the IDE, which listens
on the loopback of the session's own network. The gate's connections to it are opened from inside that
network (``sandbox.enter_network``), so the IDE's port is never exposed on the host.

One WebSocket path is the gate's own, never the IDE's: the pages' notices (``notices``, at
``protocol.NOTICES_PATH``), where the session cannot answer in the platform's place.
"""

import functools
import hmac
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpcore
import uvicorn
import websockets

from studios import forwarding

from . import sandbox
from .notices import Notices
from .protocol import NOTICES_PATH

TOKEN_HEADER = b"x-studios-session-token"

# ASGI's scope and messages, as uvicorn hands them over.
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Gate:
    """An ASGI application: check the token, strip ``base_path`` when ``strip``, forward to ``address``
    (``host:port``); serve the pages' ``notices`` itself."""

    def __init__(
        self, token: str, base_path: str, address: str, strip: bool = True, notices: Notices | None = None
    ) -> None:
        self.token = token.encode()
        self.strip = base_path if strip else ""
        self.origin = f"http://{address}"
        self.notices_path = base_path + NOTICES_PATH
        self.notices = notices or Notices()
        self.client: httpcore.AsyncConnectionPool = forwarding.new_client()

    def allowed(self, scope: Scope) -> bool:
        supplied = dict(scope["headers"]).get(TOKEN_HEADER, b"")
        return hmac.compare_digest(supplied, self.token)

    def headers(self, scope: Scope) -> list[tuple[str, str]]:
        return [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name != TOKEN_HEADER and name.decode("latin-1") not in forwarding.HOP_HEADERS
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        path = forwarding.target(scope, strip=self.strip)
        if scope["type"] == "websocket":
            if not self.allowed(scope):
                await receive()
                await send({"type": "websocket.close"})
                return
            if scope["path"] == self.notices_path:
                await self.notices.serve(receive, send)
                return
            url = self.origin.replace("http", "ws", 1) + path
            await forwarding.relay_websocket(
                functools.partial(websockets.connect, url), self.headers(scope), self.origin, scope, receive, send
            )
            return
        if not self.allowed(scope):
            await self.answer(send, 403, b"This session only answers the platform's proxy.")
        elif not await forwarding.forward_http(
            self.client, self.origin + path, self.headers(scope), scope, receive, send
        ):
            await self.answer(send, 502, b"The IDE is not answering yet.")

    async def answer(self, send: Send, status: int, text: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": text})


def serve(gate: Gate, listening_socket: socket.socket, network_fd: int | None = None) -> uvicorn.Server:
    """Serve ``gate`` on an already bound socket, in a daemon thread; with ``network_fd``, the thread reaches
    the IDE inside that network namespace."""
    config = uvicorn.Config(gate, lifespan="off", log_level="warning", ws_max_size=2**31, proxy_headers=False)
    server = uvicorn.Server(config)

    def run() -> None:
        if network_fd is not None:
            sandbox.enter_network(network_fd)
        server.run(sockets=[listening_socket])

    threading.Thread(target=run, daemon=True).start()
    return server
