"""The supervisor's gate in front of an IDE on a loopback port: the token is
required and taken off, the proxy's prefix is stripped, HTTP and WebSockets pass."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import websockets
from websockets.sync.client import connect
from websockets.sync.server import serve

from studios.supervisor import gate

BASE = "/studios/7/connect/"
TOKEN = "the-session-token"


class IDE(BaseHTTPRequestHandler):
    """Answers with the path and headers it got, as an IDE behind the gate would see them."""

    def do_GET(self):
        answer = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def echo_with_path(websocket):
    for message in websocket:
        websocket.send(f"{websocket.request.path} {message}")


@pytest.fixture
def gated():
    ide = ThreadingHTTPServer(("127.0.0.1", 0), IDE)
    threading.Thread(target=ide.serve_forever, daemon=True).start()
    sockets = serve(echo_with_path, "127.0.0.1", 0)
    threading.Thread(target=sockets.serve_forever, daemon=True).start()
    http_front, ws_front = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    gate.serve(gate.Gate(TOKEN, BASE, f"127.0.0.1:{ide.server_address[1]}"), http_front)
    gate.serve(gate.Gate(TOKEN, BASE, f"127.0.0.1:{sockets.socket.getsockname()[1]}"), ws_front)
    yield f"http://127.0.0.1:{http_front.getsockname()[1]}", f"ws://127.0.0.1:{ws_front.getsockname()[1]}"
    ide.shutdown()
    sockets.shutdown()


def wait_for(url):
    for _ in range(100):
        try:
            return httpx.get(url)
        except httpx.TransportError:
            threading.Event().wait(0.05)
    raise AssertionError(f"{url} never answered")


def test_requests_without_the_session_token_are_refused(gated):
    http_url, ws_url = gated
    assert wait_for(f"{http_url}{BASE}").status_code == 403
    assert httpx.get(f"{http_url}{BASE}", headers={"X-Studios-Session-Token": "guess"}).status_code == 403
    with pytest.raises(websockets.InvalidStatus):
        connect(f"{ws_url}{BASE}events")


def test_the_ide_gets_the_request_without_the_prefix_or_the_token(gated):
    http_url, _ = gated
    wait_for(http_url)
    seen = httpx.get(
        f"{http_url}{BASE}rstudio/file_show?path=%2Fhome%2Frstudio%2Fa%20b",
        headers={"X-Studios-Session-Token": TOKEN, "X-Studios-User": "mia"},
    ).json()
    assert seen["path"] == "/rstudio/file_show?path=%2Fhome%2Frstudio%2Fa%20b"
    assert "x-studios-session-token" not in seen["headers"]
    assert seen["headers"]["x-studios-user"] == "mia"


def test_websockets_pass_both_ways_without_the_prefix(gated):
    _, ws_url = gated
    wait_for(ws_url.replace("ws", "http", 1))
    with connect(f"{ws_url}{BASE}events?x=1", additional_headers={"X-Studios-Session-Token": TOKEN}) as socket_:
        socket_.send("hello")
        assert socket_.recv(timeout=5) == "/events?x=1 hello"
