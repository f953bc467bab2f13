"""The session proxy's ASGI application, as its own processes serve it (``runstudios``; README, Deploying): each
studio's session origin (``<prefix><id>.<session domain>``) to ``studios.proxy``, any other host refused. Its
WebSockets need uvicorn's ``--ws`` set to ``studios.splice.UVICORN_WS``.

Without uvicorn's access log: Django's logging settings give it a handler (for the platform's errors, see
``settings.answered_with_an_error``), and here it would make a record of every request only to drop it, a tenth of
the proxy's time. The proxy's requests are counted in its metrics instead.
"""

import logging
import os

# The proxy reads the database from a few long-lived threads (outside Django's request handler, channels'
# database_sync_to_async runs the access checks and presence records in one thread per process), so a connection
# kept is used again instead of opened and closed each time (README, STUDIOS_PROXY_CONN_MAX_AGE).
os.environ["CONN_MAX_AGE"] = os.environ.get("STUDIOS_PROXY_CONN_MAX_AGE", "60")

from studios_project.asgi import host_of, refuse  # sets Django up

# isort: split
from studios import metrics, origins
from studios.proxy import SessionHTTPProxy, SessionWebSocketProxy, outage_answered

logging.getLogger("uvicorn.access").disabled = True
# Nor uvicorn's own lines for each WebSocket ("[accepted]" and "connection open", written before the handshake's
# answer, then "connection closed"): the proxy logs each socket's open and close itself, with its member and studio.
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

session_origin = {
    "http": metrics.proxy_counted(outage_answered(SessionHTTPProxy())),
    "websocket": SessionWebSocketProxy(),
}


async def application(scope, receive, send):
    serve = session_origin.get(scope["type"])
    if serve is None:  # lifespan: nothing to start or stop
        return
    studio_id = origins.studio_for_host(host_of(scope))
    if studio_id is None:
        await refuse(scope, receive, send)
        return
    scope["studio_id"] = studio_id
    await serve(scope, receive, send)
