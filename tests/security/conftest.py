"""The attack suite's shared pieces: real studios in real containers, attacked the way a tester holding only the
**connect** role attacks them (code run in a kernel through the real proxy), and where the platform keeps what a
session must never reach.

Every function below that knows where a session's token, handle, container, processes or folder live knows it
in one place and says so in its docstring: only these change when the runtime does, never the attacks.
"""

import contextlib
import http.server
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from studios import lifecycle
from studios.backends import backend_for
from studios.models import Role, StudioStatus
from studios.supervisor import sandbox

from ..conftest import end_sessions_left_running
from ..factories import make_member, make_studio, make_workspace
from ..live import session_supervisor, wait_until
from ..test_isolation import run, started
from ..test_sessions import Browser, wait_for_status

requires_isolation = pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem())

NOBODY = 65534


@dataclass
class World:
    """One workspace on the local compute environment: a maintainer who starts studios, and the attacker, a member
    with only the connect role, who runs code in them."""

    platform: object
    workspace: object
    maintainer: object
    tester: object
    work_dir: Path
    data_dir: Path
    handles: list = field(default_factory=list)

    def studio(self, **fields):
        return make_studio(self.workspace, author=self.maintainer, cpus=1, memory_mb=1024, **fields)


@pytest.fixture
def world(live_platform, settings):
    """Sessions live where a default deployment keeps them: a data dir every local user can walk into, as
    settings.py makes ``./var`` (mkdir under the default umask). pytest's ``tmp_path`` sits below a 0700 folder,
    which would hide from other users what a real deployment shows them.

    The work dir is on a filesystem of its own (the host's /dev/shm), as a production one is (a data disk, NFS,
    S3): where a container's lower layer is the host's root filesystem (a template without an image), a work dir
    on it would show through that layer (read-only) whatever the backend mounts or does not. Sessions run from
    the template images by default, which have none of the host's files."""
    data_dir = Path(tempfile.mkdtemp(prefix="studios-security-"))
    data_dir.chmod(0o755)
    settings.DATA_DIR = data_dir
    work_dir = Path(tempfile.mkdtemp(prefix="studios-security-work-", dir="/dev/shm"))
    workspace = make_workspace(work_dir=str(work_dir))
    world = World(
        platform=live_platform,
        workspace=workspace,
        maintainer=make_member(workspace, Role.MAINTAIN),
        tester=make_member(workspace, Role.CONNECT),
        work_dir=work_dir,
        data_dir=data_dir,
    )
    yield world
    end_everything(world)
    shutil.rmtree(work_dir, ignore_errors=True)


def end_everything(world):
    """Leave no session behind, whatever the test did: the sessions the database knows, every handle seen during
    the test (a forged report may have made the database forget a session that still runs), then anything still
    under the data dir. The data dir is deleted only once nothing is mounted below it."""
    end_sessions_left_running()
    for environment_id, handle in world.handles:
        environment = world.workspace.compute_environments.get(pk=environment_id)
        backend_for(environment).terminate(handle, 5)
    sweep_sessions_under(world.data_dir)
    if not mounts_under(world.data_dir):
        shutil.rmtree(world.data_dir, ignore_errors=True)


def sweep_sessions_under(data_dir):
    """Delete every container whose bundle is below ``data_dir`` and kill every supervisor working there (its
    helpers and mounts end with it). Assumes a session folder is ``<data dir>/sessions/<name>``, holding the
    container's bundle and the supervisor's working directory."""
    prefix = str(Path(data_dir).resolve()) + "/"
    listing = subprocess.run(
        [sandbox.runtime(), "list", "--format", "json"], capture_output=True, text=True, timeout=30
    )
    for entry in json.loads(listing.stdout or "null") or []:
        if (entry.get("bundle") or "").startswith(prefix):
            sandbox.delete(entry["id"])
    for pid, command in processes():
        with contextlib.suppress(OSError):
            if "studios.supervisor" in command and os.readlink(f"/proc/{pid}/cwd").startswith(prefix):
                os.killpg(pid, signal.SIGKILL)
    for folder in Path(data_dir, "sessions").glob("*"):
        sandbox.remove(sandbox.Layout(folder))


# Where the platform keeps a running session. Each is today's place; the rewrite moves them.


def session_token(studio):
    """The running session's token. Assumes the platform keeps it on the studio's latest Session record."""
    studio.refresh_from_db()
    return studio.session.token


def session_handle(studio):
    """The backend's handle of the running session. Assumes ``Session.handle``."""
    studio.refresh_from_db()
    return studio.session.handle


def container_id(studio):
    """The runtime's id of the session's container. Assumes the handle's ``container``."""
    return session_handle(studio)["container"]


def session_folder(studio):
    """The session's folder on the host (its bundle, writable layer and root mounts). Assumes the handle's
    ``session_dir``."""
    return Path(session_handle(studio)["session_dir"])


def supervisor(studio):
    """The host pid of the session's supervisor (``live.session_supervisor``)."""
    return session_supervisor(session_handle(studio))[0]


def network_helpers(studio):
    """The session's network helper processes on the host (slirp4netns), as ``(pid, start time)``. Assumes they
    are children of its supervisor."""
    pid = supervisor(studio)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        (int(child), start_time(child)) for child in children if "slirp4netns" in dict(processes()).get(int(child), "")
    ]


def session_views(studio):
    """``(folder, pid of its mount table, the folder as that mount table names it)`` for every place the session's
    folder can be looked at: the host's mount namespace, and its supervisor's, where the session's mounts live
    (reached by root through ``/proc/<pid>/root``, by no one else)."""
    folder = session_folder(studio)
    views = [(folder, "self", folder)]
    pid, seen = session_supervisor(session_handle(studio))
    if pid is not None and start_time(pid) is not None:
        views.append((Path(f"/proc/{pid}/root{seen}"), pid, Path(seen)))
    return views


def container_processes(container_id):
    """The host pids (with their start times) of every process in the session's container. Assumes the runtime
    names the container's cgroup after its id (``cgroupsPath`` ``/studios/<id>``)."""
    found = []
    for pid, _ in processes():
        with contextlib.suppress(OSError):
            if f"/{container_id}" in Path(f"/proc/{pid}/cgroup").read_text():
                found.append((pid, start_time(pid)))
    return found


def ide_processes(studio):
    """The host pids (with their start times) of the studio's IDE: JupyterLab in the session's container
    (``container_processes``)."""
    commands = dict(processes())
    return [
        (pid, started)
        for pid, started in container_processes(container_id(studio))
        if "jupyterlab" in commands.get(pid, "")
    ]


def remember(world, studio):
    """Keep the session's handle, so that the session is ended at teardown even once the studio has forgotten it."""
    handle = session_handle(studio)
    if handle:
        world.handles.append((studio.compute_environment_id, handle))
    return studio


# Driving studios and sessions.


def start(world, **fields):
    """A new studio, started by the maintainer and running (in a container)."""
    return remember(world, started(world.platform, world.workspace, world.maintainer, **fields))


def restart(world, studio):
    """Start an existing studio again and wait until it runs."""
    lifecycle.start_studio(world.maintainer, studio)
    return running(world, studio)


def running(world, studio):
    """Wait until a starting studio runs."""
    return remember(world, wait_for_status(studio, StudioStatus.RUNNING))


def stop(world, studio):
    lifecycle.stop_studio(world.maintainer, studio)
    return wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def settled(studio, timeout=120):
    """Wait until a start has come to an end, running or errored; the studio, refreshed."""

    def done():
        studio.refresh_from_db()
        return studio.status not in (StudioStatus.STARTING, StudioStatus.STOPPED)

    wait_until(done, timeout, f"studio {studio.name} to finish starting")
    return studio


def run_as_tester(world, studio, code):
    """Run Python ``code`` in a new kernel of the session through the real proxy, as the connect member; what it
    printed (print once: only the first output message is returned)."""
    return run(world.platform, studio, world.tester, code)


def attacker_browser(world):
    return Browser(world.platform, world.tester)


# The host, seen from outside the session.


def processes():
    """(pid, command line with spaces) of every process on the host."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), command))
    return found


def start_time(pid):
    """The process's start time since boot, to tell it from a later process with the same pid; None once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = fields[fields.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def still_running(pid, started_at):
    """Whether process ``pid`` is still the one that started at ``started_at``."""
    return start_time(pid) is not None and start_time(pid) == started_at


def mounts_under(folder, pid="self"):
    """``(mount point, filesystem type, options)`` of every mount below ``folder`` in the mount namespace of process
    ``pid`` (the host's by default)."""
    prefix = str(Path(folder).resolve()) + "/"
    mounts = []
    for line in Path(f"/proc/{pid}/mounts").read_text().splitlines():
        _, point, kind, options, *_ = line.split()
        point = point.replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append((point, kind, options.split(",")))
    return mounts


def container_state(container_id):
    """The runtime's state of a container, or None when the runtime knows no such container."""
    state = subprocess.run([sandbox.runtime(), "state", container_id], capture_output=True, text=True, timeout=30)
    return json.loads(state.stdout)["status"] if state.returncode == 0 else None


def files_exposed(studio, relative_paths=()):
    """Every file (of any type) a session's layer exposes below its folder, in every view of it
    (``session_views``): walked everywhere except into overlay mounts of a whole root filesystem (the host's ``/``
    lies below them), where only ``relative_paths`` are looked at. Yields ``(path, lstat)``."""
    for view, pid, folder in session_views(studio):
        overlays = {
            str(view) + point.removeprefix(str(folder))
            for point, kind, _ in mounts_under(folder, pid)
            if kind == "overlay"
        }
        for directory, subdirectories, files in os.walk(view):
            if directory in overlays:
                subdirectories[:] = []
                files = [path for path in relative_paths if os.path.lexists(os.path.join(directory, path))]
            for name in files:
                path = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    yield path, os.lstat(path)


def setuid_files_exposed(studio, relative_paths=()):
    """The setuid regular files among ``files_exposed``."""
    exposed = files_exposed(studio, relative_paths)
    return [path for path, info in exposed if stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_ISUID]


def effective_uid_as_nobody(path):
    """Run ``path`` (a copy of ``id``) as the user nobody, with ``-u``: the effective uid it printed, or why it
    could not run."""
    try:
        result = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", path, "-u"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    return result.stdout.strip() if result.returncode == 0 else f"refused: {result.stderr.strip()}"


class Decoy:
    """An HTTP server on the host's loopback that answers everything and records every request it gets: where a
    proxy redirected by a session would land (the platform's database, broker and metadata services listen there)."""

    def __init__(self):
        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                requests.append(f"{self.command} {self.path}")
                body = b"decoy"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = answer

            def log_message(self, format, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def decoy():
    server = Decoy()
    yield server
    server.close()
