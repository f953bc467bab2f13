"""Crashes during starts and stops: real JupyterLab sessions in real containers, a real Celery worker (with its
beat) killed with SIGKILL, supervisors and IDEs killed, the broker down when Start is posted, the checkpoint store
full. Each test checks the studio's final status and reason, that it got there within a minute of the worker being
back, and that the host holds nothing of the session afterwards.

The platform, its worker and the tests' own helper (``platform_side``) share the private PostgreSQL and Redis of
``conftest.py`` and one data dir.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from studios.backends.local import LocalBackend
from studios.supervisor import sandbox

from ..live import killed_launch, pid_alive, sandbox_init, wait_until
from ..live import session_supervisor as supervisor_of
from .conftest import REPO

pytestmark = pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem())

# A crash is repaired within this long once a worker runs again (the bound).
CONVERGE_SECONDS = 60
START_SECONDS = 120


class Worker:
    """A Celery worker with its beat (``-B``), as a deployment runs them, in a process group of its own."""

    def __init__(self, environment, folder):
        self.environment, self.folder = environment, folder
        self.process = None

    def start(self):
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "studios_project",
            "worker",
            "-B",
            "-s",
            str(self.folder / "beat"),
            "--pool",
            "threads",
            "--concurrency",
            "4",
            "--queues",
            "studios",
            "--loglevel",
            "INFO",
        ]
        log = (self.folder / "worker.log").open("a")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=self.environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self):
        """SIGKILL to the worker and its beat: no task finishes, nothing is acknowledged."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class World:
    def __init__(self, platform, platform_side, worker, sessions_dir, studio):
        self.platform, self.platform_side, self.worker = platform, platform_side, worker
        self.sessions_dir, self.studio = sessions_dir, studio

    def state(self):
        return self.platform_side.ask("state", self.studio["id"])

    def act(self, action):
        return self.platform_side.ask("act", action, self.studio["id"])

    def wait_for(self, status, timeout):
        """The studio's state once it has ``status``; the time it took."""
        began = time.monotonic()
        wait_until(lambda: self.state()["status"] == status, timeout, f"the studio to be {status}", interval=0.5)
        return self.state(), time.monotonic() - began

    def started(self):
        self.act("start")
        state, _ = self.wait_for("running", START_SECONDS)
        return state["session"]

    def leftovers(self):
        """What is on this host of this platform's sessions, seen without the platform's code: containers, their
        processes, supervisors, network helpers, session folders, loop devices."""
        prefix = str(self.sessions_dir) + "/"
        listing = subprocess.run([sandbox.runtime(), "list", "--format", "json"], capture_output=True, text=True)
        left = [
            f"container {c['id']}" for c in json.loads(listing.stdout or "null") or [] if c["bundle"].startswith(prefix)
        ]
        for process in Path("/proc").glob("[0-9]*"):
            try:
                command = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                folder = os.readlink(process / "cwd")
            except OSError:
                continue
            if folder.startswith(prefix) or (prefix in command):
                left.append(f"process {process.name}: {command[:80]}")
        left += [f"folder {path.name}" for path in self.sessions_dir.glob("*")]
        loops = json.loads(
            subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True).stdout or "{}"
        )
        left += [
            f"loop device {d['name']}"
            for d in loops.get("loopdevices", [])
            if (d.get("back-file") or "").startswith(prefix)
        ]
        return left

    def helpers_of(self, session):
        """The pids of the session's supervisor and of its children (the network helper)."""
        pid = session_supervisor(self, session)
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]


def session_supervisor(world, session):
    """The supervisor's pid (``live.session_supervisor``)."""
    pid, _ = supervisor_of(session["handle"])
    if pid is None:
        pytest.fail("the session's supervisor is not running")
    return pid


def session_layer(session):
    """The session's writable layer, as its supervisor sees it."""
    pid, folder = supervisor_of(session["handle"])
    return Path(f"/proc/{pid}/root{folder}/layer/upper")


@pytest.fixture
def world(services, platform, platform_side, tmp_path):
    _, _, _, environment = services
    sessions_dir = Path(environment["STUDIOS_DATA_DIR"]) / "sessions"
    worker = Worker({**environment, "STUDIOS_PLATFORM_URL": platform.url}, tmp_path)
    studio = platform_side.ask("local_studio", str(tmp_path / "work"))
    world = World(platform, platform_side, worker, sessions_dir, studio)
    yield world
    worker.stop()
    backend = LocalBackend(sessions_dir)
    backend.sweep(backend.inventory(), [])  # whatever a failed test left


def test_a_start_whose_worker_was_killed_before_it_created_anything_runs_once_a_worker_is_back(world, services):
    session = world.act("start")["session"]  # no worker runs: the task waits in the queue
    killed_launch(session["id"], "before-launch", {**services[3], "STUDIOS_PLATFORM_URL": world.platform.url})
    planned = world.state()["session"]
    assert planned["handle"] and not planned["launched"]
    world.worker.start()
    state, took = world.wait_for("running", CONVERGE_SECONDS + 10)
    assert took <= CONVERGE_SECONDS + 10 and state["session"]["id"] == session["id"]
    world.act("stop")
    state, _ = world.wait_for("stopped", CONVERGE_SECONDS)
    assert (state["reason"], state["session"]["checkpoint"]) == ("", "finalized")
    assert world.leftovers() == []


def test_a_supervisor_started_by_a_worker_killed_before_recording_it_is_the_sessions_one(world, services):
    session = world.act("start")["session"]
    killed_launch(session["id"], "before-recorded", {**services[3], "STUDIOS_PLATFORM_URL": world.platform.url})
    # Its supervisor runs on and reports: the platform knows it is launched, and where it is reached (its plan).
    state, _ = world.wait_for("running", START_SECONDS)
    assert state["session"]["launched"]
    world.worker.start()  # the queued launch finds the session launched and leaves it alone
    time.sleep(5)
    containers = [line for line in world.leftovers() if line.startswith("container")]
    assert len(containers) == 1 and world.state()["status"] == "running"
    world.act("stop")
    state, _took = world.wait_for("stopped", CONVERGE_SECONDS)
    assert state["reason"] == "" and state["session"]["checkpoint"] == "finalized"
    assert world.leftovers() == []


def test_a_stop_whose_worker_is_killed_while_it_waits_ends_once_a_worker_is_back(world):
    world.worker.start()
    session = world.started()
    supervisor = session_supervisor(world, session)
    os.kill(supervisor, signal.SIGSTOP)  # a session slow to save its final checkpoint
    world.act("stop")
    wait_until(lambda: "stop_session" in (world.worker.folder / "worker.log").read_text(), 30, "the stop task to run")
    time.sleep(2)  # it waits for the session
    world.worker.kill()
    os.kill(supervisor, signal.SIGCONT)  # the session saves its final checkpoint and ends, worker or not
    wait_until(lambda: not pid_alive(supervisor), 60, "the supervisor to end")
    world.worker.start()
    state, took = world.wait_for("stopped", CONVERGE_SECONDS)
    assert took <= CONVERGE_SECONDS
    assert (state["reason"], state["session"]["checkpoint"]) == ("", "finalized")
    assert world.leftovers() == []


def test_an_ide_killed_inside_its_session_errors_the_studio_once_nothing_of_it_is_left(world):
    world.worker.start()
    session = world.started()
    helpers = world.helpers_of(session)
    ide = sandbox_init(session["handle"])
    os.kill(ide, signal.SIGKILL)
    state, _took = world.wait_for("errored", CONVERGE_SECONDS)
    assert state["reason"].startswith("The IDE exited unexpectedly with code -9. Start the studio again")
    assert re.search(r"Changes made since checkpoint \S+ was saved at [\d: -]+UTC may be lost\.$", state["reason"])
    assert world.leftovers() == [] and not any(pid_alive(pid) for pid in helpers)


@pytest.mark.parametrize("moment", ["restoring its checkpoint", "running"])
def test_a_supervisor_killed_errors_the_studio_once_nothing_of_it_is_left(world, moment):
    world.worker.start()
    if moment == "restoring its checkpoint":
        session = world.started()
        # A layer big enough for its restore to take a while: written where the session's files are.
        upper = session_layer(session)
        (upper / "root").mkdir(exist_ok=True)
        with open(upper / "root/large", "wb") as large:
            for _ in range(48):
                large.write(os.urandom(2**20))
        world.act("stop")
        world.wait_for("stopped", CONVERGE_SECONDS)
        world.act("start")
        wait_until(
            lambda: any(
                s["name"] == "Restoring checkpoint" and s["state"] == "in-progress"
                for s in world.state()["session"]["steps"]
            ),
            START_SECONDS,
            "the restore to begin",
            interval=0.05,
        )
        session = world.state()["session"]
    else:
        session = world.started()
    supervisor = session_supervisor(world, session)
    os.killpg(supervisor, signal.SIGKILL)
    state, _took = world.wait_for("errored", CONVERGE_SECONDS)
    assert state["reason"].startswith("The session's supervisor ended unexpectedly.")
    assert world.leftovers() == []


def test_a_start_posted_while_the_broker_is_down_runs_once_it_is_back(world, broker):
    world.worker.start()
    page = httpx.get(
        f"{world.platform.url}/studios/{world.studio['id']}/", cookies={"sessionid": world.studio["cookie"]}
    )
    token = page.cookies.get("csrftoken") or re.search(r'"X-CSRFToken": "([^"]+)"', page.text).group(1)
    broker.stop()
    posted = httpx.post(
        f"{world.platform.url}/studios/{world.studio['id']}/start/",
        data={"csrfmiddlewaretoken": token},
        cookies={"sessionid": world.studio["cookie"], "csrftoken": token},
        headers={"Referer": world.platform.url},
        timeout=30,
    )
    assert posted.status_code == 302  # the start is recorded; its task could not be queued
    assert world.state()["status"] == "starting"
    broker.start()
    _state, _took = world.wait_for("running", CONVERGE_SECONDS + 15)
    world.act("stop")
    world.wait_for("stopped", CONVERGE_SECONDS)
    assert world.leftovers() == []


def test_a_full_checkpoint_store_shows_on_the_status_panel_until_a_checkpoint_succeeds(world, tmp_path):
    world.worker.start()
    store = tmp_path / "work"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(store)], check=True)
    try:
        session = world.started()
        upper = session_layer(session)
        (upper / "root").mkdir(exist_ok=True)
        (upper / "root/results.bin").write_bytes(os.urandom(32 * 2**20))
        presence = f"{world.platform.url.replace('http', 'ws')}/ws/studios/{world.studio['id']}/presence/"
        cookie = {"Cookie": f"sessionid={world.studio['cookie']}"}
        with connect(presence, additional_headers=cookie, origin=world.platform.url) as page:
            page.recv(timeout=10)  # the avatars, as the page opens
            state = world.platform_side.ask("checkpoint", session["id"])
            assert "the checkpoint store is full" in state["session"]["checkpoint_error"]
            pushed = page.recv(timeout=10)  # pushed to the members on the studio's pages
        assert f'id="checkpoint-health-{world.studio["id"]}"' in pushed and "the checkpoint store is full" in pushed
        page = world.platform.get(f"/studios/{world.studio['id']}/", world.studio).text
        assert re.search(r"The last checkpoint failed (now|\d+ seconds? ago): the checkpoint store is full", page)
        (upper / "root/results.bin").unlink()
        state = world.platform_side.ask("checkpoint", session["id"])
        assert state["session"]["checkpoint_error"] == ""
        assert (
            "The last checkpoint failed" not in world.platform.get(f"/studios/{world.studio['id']}/", world.studio).text
        )
        world.act("stop")
        world.wait_for("stopped", CONVERGE_SECONDS)
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)
    assert world.leftovers() == []


def test_a_checkpoint_saved_while_the_platforms_database_is_down_is_recorded_once_it_is_back(world, postgres):
    world.worker.start()
    session = world.started()
    wait_until(lambda: world.state()["session"]["manifest"], 30, "the first checkpoint to be recorded")
    first = world.state()["session"]["manifest"]
    postgres.refuse_tcp()  # the platform cannot reach its database (the tests' helper still can)
    try:
        assert world.platform_side.ask("checkpoint", session["id"])["session"]["manifest"] == first
    finally:
        postgres.refuse_tcp(False)
    recorded = wait_until(lambda: world.state()["session"]["manifest"] != first, 30, "the checkpoint to be recorded")
    assert recorded
    world.act("stop")
    world.wait_for("stopped", CONVERGE_SECONDS)
    assert world.leftovers() == []


def test_a_session_no_studio_owns_any_more_is_swept_off_the_host(world):
    world.worker.start()
    world.started()
    assert world.platform_side.ask("forget_studio", world.studio["id"])
    began = time.monotonic()
    wait_until(lambda: world.leftovers() == [], CONVERGE_SECONDS, "the sweeper to remove the session", interval=1)
    assert time.monotonic() - began <= CONVERGE_SECONDS
    assert "removed what no session owns" in (world.worker.folder / "worker.log").read_text()
