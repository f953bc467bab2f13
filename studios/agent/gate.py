"""The gate: the session's front door for IDEs that cannot check the session token themselves.

code-server and RStudio Server have no way to trust a header, and the address the platform reaches
a session at (a port forwarded on the host's loopback, a plain process's port, a Batch host's port)
other programs can reach too, so the agent puts this small ASGI server in front of them: every request and
WebSocket must carry the session token the platform's proxy adds (anything else gets 403),
the token is taken off, the proxy's path prefix is stripped, and the rest is streamed to the
IDE, on a Unix socket where the IDE can listen on one.
"""

import functools
import hmac
import threading

import httpx
import uvicorn
import websockets

from studios import forwarding

TOKEN_HEADER = b"x-studios-session-token"


class Gate:
    """An ASGI application: check the token, strip ``base_path``, forward to the IDE at ``upstream``
    (``("unix", path)`` or ``("tcp", "host:port")``)."""

    def __init__(self, token, base_path, upstream):
        self.token = token.encode()
        self.base_path = base_path
        kind, address = upstream
        if kind == "unix":
            self.origin = "http://localhost"
            self.client = forwarding.new_client(transport=httpx.AsyncHTTPTransport(uds=address))
            self.connect_websocket = functools.partial(websockets.unix_connect, address)
        else:
            self.origin = f"http://{address}"
            self.client = forwarding.new_client()
            self.connect_websocket = websockets.connect

    def allowed(self, scope):
        supplied = dict(scope["headers"]).get(TOKEN_HEADER, b"")
        return hmac.compare_digest(supplied, self.token)

    def headers(self, scope):
        return [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name != TOKEN_HEADER and name.decode("latin-1") not in forwarding.HOP_HEADERS
        ]

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return
        path = forwarding.target(scope, strip=self.base_path)
        if scope["type"] == "websocket":
            if not self.allowed(scope):
                await receive()
                await send({"type": "websocket.close"})
                return
            url = self.origin.replace("http", "ws", 1) + path
            await forwarding.relay_websocket(
                functools.partial(self.connect_websocket, url), self.headers(scope), self.origin, scope, receive, send
            )
            return
        if not self.allowed(scope):
            await self.answer(send, 403, b"This session only answers the platform's proxy.")
        elif not await forwarding.forward_http(self.client, self.origin + path, self.headers(scope), scope, receive, send):
            await self.answer(send, 502, b"The IDE is not answering yet.")

    async def answer(self, send, status, text):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": text})


def serve(gate, listening_socket):
    """Serve ``gate`` on an already bound socket, in a daemon thread."""
    config = uvicorn.Config(gate, lifespan="off", log_level="warning", ws_max_size=2**31, proxy_headers=False)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, kwargs={"sockets": [listening_socket]}, daemon=True).start()
