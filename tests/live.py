"""What tests against live processes share: waiting, with a deadline, for something to happen; a browser holding a
user's login; running code in a session's kernel; a wheel and a .deb to install without a network; a start task
killed at an exact point."""

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
import websockets.sync.client
from django.db import connection
from django.utils import timezone

from studios import lifecycle, tasks
from studios.models import Session, StudioStatus
from studios.supervisor import sandbox

# How long a test waits for a session to start.
START_TIMEOUT = 120
REPO = Path(__file__).resolve().parents[1]


def wait_until(predicate, timeout, what, interval=0.1):
    """Call ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass (the test fails
    saying ``what`` it waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(interval)


def wait_for_status(studio, wanted, timeout=START_TIMEOUT):
    """The studio, once its status is ``wanted``; the test fails at once when it errors instead."""

    def arrived():
        studio.refresh_from_db()
        if studio.status == StudioStatus.ERRORED and wanted != StudioStatus.ERRORED:
            pytest.fail(f"studio errored: {studio.status_reason}")
        return studio.status == wanted

    wait_until(arrived, timeout, f"studio {studio.name} to be {wanted}", interval=0.25)
    return studio


def killed_launch(session_id, point, environment):
    """Run the launch task in a process of its own that is killed by SIGKILL at ``point`` (``faults/killed_launch.py``),
    with ``environment`` (the platform's: its database, broker and URL)."""
    died = subprocess.run(
        [sys.executable, "-m", "tests.faults.killed_launch", str(session_id), point], cwd=REPO, env=environment
    )
    assert died.returncode == -signal.SIGKILL


def live_platform_environment(platform):
    """The environment a process of the live platform's gets (a worker's): the tests' database, this process's
    broker and settings, the platform's URL."""
    database = connection.settings_dict
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="studios_project.settings",
        DATABASE_URL=f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        STUDIOS_PLATFORM_URL=platform.url,
    )


def left_unclaimed(session):
    """As the session is once the claim of the task that worked on it is older than the reconcile waits for."""
    stale = timezone.now() - timedelta(seconds=lifecycle.TASK_STALE_SECONDS + 1)
    Session.objects.filter(pk=session.pk).update(worked_on=stale)


def reconciled_until_running(studio, timeout=START_TIMEOUT):
    """Beat's reconcile (every 20 s in a deployment), run until the studio runs; the test fails if it errors."""

    def running():
        tasks.reconcile_sessions()
        studio.refresh_from_db()
        if studio.status == StudioStatus.ERRORED:
            pytest.fail(f"studio errored: {studio.status_reason}")
        return studio.status == StudioStatus.RUNNING

    wait_until(running, timeout, f"the reconcile to find studio {studio.name} running", interval=1)
    return studio


def pid_alive(pid):
    """Whether process ``pid`` runs (a zombie, or one gone between two looks, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def session_supervisor(handle):
    """``(host pid, session folder as it sees it)`` of a session's running supervisor, or ``(None, folder)``. A session
    run from its image has it in its job container, as the child of the container's first process (the image's
    tini), with the job's folder (``SessionSpec.job``); otherwise it is the host process the handle names, found by
    its working directory (the session folder) when the handle has no pid yet."""
    if not handle.get("image"):
        folder = handle["session_dir"]
        for process in Path("/proc").glob("[0-9]*"):
            try:
                if (
                    b"studios.supervisor" in (process / "cmdline").read_bytes()
                    and os.readlink(process / "cwd") == folder
                ):
                    return int(process.name), folder
            except OSError:
                continue
        return None, folder
    folder = f"/tmp/{handle['container']}"
    state = subprocess.run([sandbox.runtime() or "runc", "state", handle["container"]], capture_output=True, text=True)
    if state.returncode != 0:
        return None, folder
    init = json.loads(state.stdout)["pid"]
    try:
        children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    except OSError:
        return None, folder
    return (int(children[0]) if children else None), folder


def sandbox_init(handle):
    """The host pid of the first process of a session's sandbox (its IDE), or None."""
    if not handle.get("image"):
        state = subprocess.run(
            [sandbox.runtime() or "runc", "state", handle["container"]], capture_output=True, text=True
        )
        return json.loads(state.stdout)["pid"] if state.returncode == 0 else None
    supervisor, _ = session_supervisor(handle)
    own = os.readlink(f"/proc/{supervisor}/ns/pid")
    for child in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split():
        if os.readlink(f"/proc/{child}/ns/pid") != own:
            return int(child)
    return None


class Browser:
    """An HTTP client holding a user's platform login, posting forms with their CSRF token."""

    def __init__(self, platform, user=None):
        self.platform = platform
        self.http = httpx.Client(base_url=platform.url, timeout=30)
        if user is not None:
            self.http.cookies.set("sessionid", platform.session_cookie(user))

    def session(self, studio, next_path="/"):
        """A client on ``studio``'s session origin, signed in there by the ticket round trip when the platform
        grants one (``granted`` says whether it did: else it holds the platform's answer)."""
        session = SessionClient(self.platform, studio)
        answer = self.http.get(session.ticket_page(next_path))
        session.granted = answer.status_code == 302 and answer.headers["location"].startswith(session.origin + "/")
        if session.granted:
            redeemed = session.http.get(answer.headers["location"].removeprefix(session.origin))
            assert redeemed.status_code == 302 and redeemed.headers["location"] == next_path, redeemed.text
        else:
            session.refusal = answer
        return session

    def post_form(self, path, data=None):
        page = self.http.get("/")
        token = self.http.cookies.get("csrftoken") or re.search(r'"X-CSRFToken": "([^"]+)"', page.text).group(1)
        return self.http.post(
            path, data={"csrfmiddlewaretoken": token, **(data or {})}, headers={"Referer": str(self.http.base_url)}
        )

    def cookie_header(self):
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())


class SessionClient:
    """An HTTP client on one studio's session origin: it connects to the session proxy's address and names the
    origin in ``Host`` (Python does not resolve ``*.localhost``), keeping the cookies that origin sets."""

    def __init__(self, platform, studio):
        self.platform, self.studio = platform, studio
        self.host = platform.session_host(studio)
        self.origin = platform.session_origin(studio)
        self.http = httpx.Client(base_url=platform.session_url, headers={"Host": self.host}, timeout=30)

    def cookie_header(self):
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())

    def ticket_page(self, next_path="/"):
        """Where the session origin sends this client for a ticket to ``next_path``: the platform's ticket page (a
        path on it), naming the state the origin keeps in this client."""
        bounce = self.http.get(next_path)
        assert bounce.status_code == 302, bounce.text
        location = urlsplit(bounce.headers["location"])
        return f"{location.path}?{location.query}"

    def websocket(self, path, origin=None, **options):
        """An asyncio WebSocket to ``path`` on the origin, with this client's cookies, from a page of ``origin``
        (the session origin's own by default)."""
        return websockets.connect(
            f"ws://{self.host}{path}",
            host="127.0.0.1",
            port=self.platform.session_port,
            additional_headers={"Cookie": self.cookie_header()},
            origin=origin or self.origin,
            **options,
        )

    def xsrf(self):
        """JupyterLab's _xsrf token, from the cookie its page sets."""
        self.http.get("/lab")
        return self.http.cookies.get("_xsrf")

    def start_kernel(self):
        kernel = self.http.post("/api/kernels", json={"name": "python3"}, headers={"X-XSRFToken": self.xsrf()})
        assert kernel.status_code == 201, kernel.text
        return kernel.json()["id"]


def execute_request(code):
    """A Jupyter ``execute_request`` message for ``code``, and its id."""
    msg_id = uuid.uuid4().hex
    message = {
        "header": {
            "msg_id": msg_id,
            "username": "test",
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "buffers": [],
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
    }
    return json.dumps(message), msg_id


async def run_in(socket, code):
    """Run ``code`` over an open kernel WebSocket; its output (or traceback)."""
    message, msg_id = execute_request(code)
    await socket.send(message)
    while True:
        message = json.loads(await asyncio.wait_for(socket.recv(), 60))
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "stream":
            return message["content"]["text"]
        if message["msg_type"] == "error":
            return "\n".join(message["content"]["traceback"])


def execute_without_a_loop(platform, user, studio, code):
    """As ``execute``, for tests whose thread runs an event loop of its own (Playwright's)."""
    session = Browser(platform, user).session(studio)
    kernel = session.start_kernel()
    with websockets.sync.client.connect(
        f"ws://{session.host}/api/kernels/{kernel}/channels",
        address=("127.0.0.1", platform.session_port),
        additional_headers={"Cookie": session.cookie_header()},
        origin=session.origin,
    ) as socket:
        message, msg_id = execute_request(code)
        socket.send(message)
        while True:
            reply = json.loads(socket.recv(timeout=60))
            if reply.get("parent_header", {}).get("msg_id") == msg_id and reply["msg_type"] in ("stream", "error"):
                return reply["content"].get("text") or "\n".join(reply["content"]["traceback"])


async def execute(platform, browser, studio, code, idle=0):
    """Run ``code`` in a new kernel over the proxied kernel WebSocket, ``idle`` seconds after opening it."""
    session = browser.session(studio)
    kernel = session.start_kernel()
    async with session.websocket(f"/api/kernels/{kernel}/channels") as socket:
        await asyncio.sleep(idle)
        return await run_in(socket, code)


def run(platform, studio, user, code):
    return asyncio.run(execute(platform, Browser(platform, user), studio, code)).strip()


def make_wheel(directory):
    """A tiny pure-Python wheel, so that the test installs a real package without a network."""
    path = Path(directory) / "greeting-1.0-py3-none-any.whl"
    files = {
        "greeting/__init__.py": "def hello():\n    return 'hello from a checkpoint'\n",
        "greeting-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: greeting\nVersion: 1.0\n",
        "greeting-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(
            "greeting-1.0.dist-info/RECORD",
            "".join(f"{name},,\n" for name in files) + "greeting-1.0.dist-info/RECORD,,\n",
        )
    path.write_bytes(buffer.getvalue())
    return path


def debian_package(directory):
    """A tiny real .deb, so that the test installs a system package without a network."""
    tree = Path(directory) / "studios-probe"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: studios-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: Studios <dev@example.org>\n"
        "Description: a probe for the isolation tests\n"
    )
    (tree / "usr/share/studios-probe").mkdir(parents=True)
    (tree / "usr/share/studios-probe/README").write_text("installed in a session\n")
    subprocess.run(["dpkg-deb", "--build", str(tree), str(tree) + ".deb"], check=True, capture_output=True)
    return str(tree) + ".deb"
