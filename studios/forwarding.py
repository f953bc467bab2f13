"""Forwarding requests and WebSockets to an upstream server, streamed, for raw ASGI applications.

Two places forward: the platform's connect proxy (browser to session; its WebSockets are spliced,
``studios.splice``) and the session agent's gate (proxy to an IDE that cannot check the session
token itself). This module has no Django dependency because the agent runs inside session images.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

import httpcore
import websockets

# ASGI's callables and scope (the ``asgiref.typing`` shapes, without the dependency).
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[str, str]]

# Hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection, not the message.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
HOP_HEADER_BYTES = {name.encode() for name in HOP_HEADERS}


def new_client() -> httpcore.AsyncConnectionPool:
    """A pool of kept-alive connections to upstreams. httpcore, not httpx: a proxy wants none of httpx's client
    (cookies, redirects, URL and header models), which cost more than the forwarding itself; headers stay bytes."""
    return httpcore.AsyncConnectionPool(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


# Connecting and sending may take this long; an answer may take as long as it takes (a long poll, a download).
TIMEOUTS = {"connect": 30.0, "write": 30.0, "pool": 30.0, "read": None}
UNREACHABLE = (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError, httpcore.UnsupportedProtocol)


def target(scope: Scope, strip: str = "") -> str:
    """The request's path and query as sent upstream; ``strip`` is a path prefix the upstream does not expect."""
    path: str = scope["path"]
    if strip and path.startswith(strip):
        path = "/" + path[len(strip) :]
    path = quote(path, safe="/%:@!$&'()*+,;=-._~")
    query = scope.get("query_string", b"").decode("latin-1")
    return path + (f"?{query}" if query else "")


async def forward_http(
    client: httpcore.AsyncConnectionPool,
    url: str,
    headers: Headers,
    scope: Scope,
    receive: Receive,
    send: Send,
    added: Sequence[tuple[bytes, bytes]] = (),
) -> bool:
    """Stream the request to ``url`` and the response back, with the response headers ``added`` after the
    upstream's. Returns False, having sent nothing, when the upstream cannot be reached."""

    async def request_body() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            yield message.get("body", b"")
            if not message.get("more_body"):
                return

    method = scope["method"]
    encoded = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    content: bytes | AsyncIterator[bytes] = b""
    if method not in ("GET", "HEAD"):
        content = request_body()
        if not any(name == "content-length" for name, _value in headers):
            encoded.append((b"transfer-encoding", b"chunked"))
    request = httpcore.Request(method, url, headers=encoded, content=content, extensions={"timeout": TIMEOUTS})
    try:
        response = await client.handle_async_request(request)
    except UNREACHABLE:
        return False
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [*((n, v) for n, v in response.headers if n.lower() not in HOP_HEADER_BYTES), *added],
            }
        )
        async for chunk in response.aiter_stream():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await response.aclose()
    return True


async def refuse_websocket(scope: Scope, send: Send, status: int, message: str) -> None:
    """Answer a WebSocket handshake with an HTTP error, through the ASGI "websocket.http.response" extension
    (uvicorn has it). Without it the only refusal is a close, which a browser sees as 403 whatever the cause."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close"})
        return
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": message.encode()})


async def relay_websocket(
    connect: Callable[..., Awaitable[Any]],
    headers: Headers,
    origin: str,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Open the upstream WebSocket, accept the client's, and relay frames both ways until either side ends.

    ``connect`` is ``websockets.connect`` with its URL (or ``unix_connect`` with its socket and URL);
    ``headers`` are the client's to pass on: the handshake's own (Host, Origin, Sec-WebSocket-*) are the
    websockets client's to write, and Origin is ``origin``, the upstream's own address (the client's was
    checked before). The client is refused with a 502 when the upstream cannot be opened.
    """
    await receive()  # websocket.connect
    headers = [
        (name, value)
        for name, value in headers
        if not name.startswith("sec-websocket") and name not in ("host", "origin")
    ]
    try:
        upstream = await connect(
            additional_headers=headers,
            subprotocols=scope.get("subprotocols") or None,
            max_size=None,
            origin=origin,
            user_agent_header=None,
        )
    except (OSError, websockets.WebSocketException):
        await refuse_websocket(scope, send, 502, "The session did not answer; it may be stopping or restarting.")
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

    async def from_upstream() -> None:
        """However the upstream side ends, close the client's too (a client socket left open to a dead
        session would keep its member "connected" for good)."""
        try:
            async for message in upstream:
                key = "text" if isinstance(message, str) else "bytes"
                await send({"type": "websocket.send", key: message})
        except websockets.ConnectionClosed:
            pass  # the upstream went away without a closing handshake
        except OSError:
            return  # the client went away; the receiving side tidies up
        await send({"type": "websocket.close"})

    relay = asyncio.create_task(from_upstream())
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            try:
                await upstream.send(message["text"] if message.get("text") is not None else message["bytes"])
            except websockets.ConnectionClosed:
                break
    finally:
        relay.cancel()
        await upstream.close()
