"""The supervisor's gate in front of an IDE on a loopback port: the token is
required and taken off, the proxy's prefix is stripped, HTTP and WebSockets pass; the pages' notices are the gate's
own, and of what a page answers only "saved" counts."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import websockets
from websockets.sync.client import connect
from websockets.sync.server import serve

from studios.supervisor import gate, protocol
from studios.supervisor.notices import Notices

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


@pytest.fixture
def noticed():
    """A gate's notices for the session's pages, and the gate's WebSocket address; no IDE answers behind the gate."""
    notices = Notices()
    front = socket.create_server(("127.0.0.1", 0))
    gate.serve(gate.Gate(TOKEN, BASE, "127.0.0.1:9", notices=notices), front)
    url = f"ws://127.0.0.1:{front.getsockname()[1]}"
    wait_for(url.replace("ws", "http", 1))
    return notices, url


def open_page(ws_url):
    """A session page's notices WebSocket, through the gate, as the proxy opens it."""
    return connect(f"{ws_url}{BASE}{protocol.NOTICES_PATH}", additional_headers={"X-Studios-Session-Token": TOKEN})


def wait_for_pages(notices, count):
    deadline = time.monotonic() + 5
    while len(notices.pages) != count:
        assert time.monotonic() < deadline, f"{count} pages never connected"
        time.sleep(0.01)


def test_pages_hear_a_stop_from_the_gate_itself_and_only_a_saved_answer_counts(noticed):
    notices, ws_url = noticed
    with pytest.raises(websockets.InvalidStatus):
        connect(f"{ws_url}{BASE}{protocol.NOTICES_PATH}")  # not the platform's proxy
    with open_page(ws_url) as saving, open_page(ws_url) as boasting, open_page(ws_url) as early:
        wait_for_pages(notices, 3)
        notices.warn("rnaseq will be stopped at 14:05 UTC.", "http://platform/studios/7/")
        for page in (saving, boasting, early):
            assert json.loads(page.recv(timeout=5)) == {
                "kind": "warning",
                "message": "rnaseq will be stopped at 14:05 UTC.",
                "link": "http://platform/studios/7/",
            }
        early.send(json.dumps({"saved": True}))  # before it was told of any stop: not an answer
        time.sleep(0.3)  # (the gate reads it before the stop: nothing to wait on, it changes nothing)
        with ThreadPoolExecutor() as pool:
            began = time.monotonic()
            stop = pool.submit(notices.save_pages, "rnaseq was stopped by Mia.", "http://platform/studios/7/", 5)
            assert json.loads(saving.recv(timeout=5)) == {
                "kind": "stop",
                "message": "rnaseq was stopped by Mia.",
                "link": "http://platform/studios/7/",
                "seconds": 5,
            }
            # One page at a time, in the order they opened: the next hears of the stop once this one has answered.
            with pytest.raises(TimeoutError):
                boasting.recv(timeout=0.5)
            saving.send(json.dumps({"saved": True}))
            assert json.loads(boasting.recv(timeout=5))["kind"] == "stop"
            boasting.send(json.dumps({"saved": "every file, and the admin password"}))
            assert json.loads(early.recv(timeout=5))["kind"] == "stop"
            early.send("x" * 10_000)
            early.close()
            assert stop.result(timeout=10) == (1, 2)
            assert time.monotonic() - began < 5  # every page answered or left: no waiting for the bound
    # A page opened after the stop hears of it too.
    with open_page(ws_url) as late:
        assert json.loads(late.recv(timeout=5))["kind"] == "stop"


def test_a_page_that_does_not_answer_holds_the_stop_only_for_the_bound(noticed):
    notices, ws_url = noticed
    with open_page(ws_url) as silent, open_page(ws_url) as waiting:
        wait_for_pages(notices, 2)
        began = time.monotonic()
        assert notices.save_pages("rnaseq was stopped.", "", 1) == (0, 2)
        assert 1 <= time.monotonic() - began < 2
        # The page whose turn never came is told all the same.
        for page in (silent, waiting):
            assert json.loads(page.recv(timeout=5))["kind"] == "stop"
