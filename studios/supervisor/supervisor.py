"""The session supervisor: one per session, always outside the session's sandbox.

It holds the session token, restores the checkpoint into a fresh writable layer, mounts the datasets,
starts the template's IDE alone in its sandbox (a container, or a plain process where the host cannot
isolate), fronts it with the gate, reports progress and readiness to the platform, takes checkpoints of
the layer from outside when the platform asks and when it is stopped, and takes everything down before it
reports that the session has ended. Nothing it puts in the sandbox is secret, and nothing it reads from
the sandbox (the layer's files) is trusted.

Configuration comes from the environment (``protocol.SessionConfig``). SIGTERM, or the platform's stop, gives the
session's pages a few seconds to save their open documents (``notices``), then stops the IDE, saves a final
checkpoint and ends the session.
"""

import errno
import hmac
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from checkpoints import snapshot
from checkpoints.store import store_for

from . import gate, images, sandbox, saves, work
from .notices import Notices
from .protocol import (
    CHECKPOINT,
    CHECKPOINT_FAILED,
    FAILED,
    MOUNTING,
    NOTICE_MAX_LENGTH,
    PAGES_SAVED,
    PROGRESS,
    PROVISIONING,
    READY,
    REPORTS_PATH,
    RESTORING,
    SAVE_SECONDS,
    TICKET,
    TICKETS_PATH,
    WORKING,
    SessionConfig,
    starting_step,
)

log = logging.getLogger("studios.supervisor")

READY_TIMEOUT_SECONDS = 180
UNRECORDED_RETRY_SECONDS = 10
WATCH_SECONDS = 1  # how often a running session's IDE, helpers and memory are looked at
FINAL_REPORT_SECONDS = 60
STOP_IDE_SECONDS = 10
# What the pages are told when a stop does not say why (SIGTERM: the host or its scheduler ends the session).
STOPPING_MESSAGE = "This session is stopping."
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SessionEnded(Exception):
    """The session cannot go on; the message is the reason the studio shows."""

    def __init__(self, reason: str, checkpoint_invalid: bool = False) -> None:
        super().__init__(reason)
        self.checkpoint_invalid = checkpoint_invalid


@dataclass(frozen=True)
class IDE:
    """How one template's IDE runs: its command, the path that answers once it is up, and whether it expects
    to be served at ``/`` (the gate then strips the proxy's prefix)."""

    command: list[str]
    ready_path: str
    strip_prefix: bool = True
    environ: dict[str, str] = field(default_factory=dict)
    save_copy_prefix: str = ""  # the copy the IDE makes of a file while it saves it in place (``saves``), if any


def ide_for(template: str, python: str, port: int, base_path: str, root_dir: str | Path) -> IDE:
    """The IDE of ``template``, listening on port ``port`` of its own loopback, served under ``base_path``."""
    if template == "jupyterlab":
        command = [
            python,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--ServerApp.base_url={base_path}",
            f"--ServerApp.root_dir={root_dir}",
            # The gate has checked the platform's token; JupyterLab holds none of its own.
            "--IdentityProvider.token=",
            # Requests arrive through the platform's proxy with the platform's Host header.
            "--ServerApp.allow_remote_access=True",
            # A closed network: no update checks or news feeds.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        return IDE(command, "api/status", strip_prefix=False, save_copy_prefix=saves.JUPYTER_COPY_PREFIX)
    if template == "vscode":
        command = [
            "code-server",
            "--bind-addr",
            f"127.0.0.1:{port}",
            "--auth",
            "none",
            "--disable-telemetry",
            "--disable-update-check",
            "--disable-workspace-trust",
            "--disable-getting-started-override",  # its welcome page advertises Coder's product otherwise
            *(["--abs-proxy-base-path", base_path.rstrip("/")] if base_path.rstrip("/") else []),
            str(root_dir),
        ]
        return IDE(command, "healthz")
    if template == "rstudio":
        command = [
            "/usr/lib/rstudio-server/bin/rserver",
            "--server-daemonize=0",
            "--www-address=127.0.0.1",
            f"--www-port={port}",
            "--auth-none=1",
            "--server-user=rstudio",
            f"--www-root-path={base_path}",
        ]
        return IDE(command, "", environ={"USER": "rstudio"})
    raise SessionEnded(f"Template {template} is not available on this compute environment.")


def checkpoint_failure(error: BaseException) -> str:
    """Why a checkpoint failed, in words for the studio's page (never a host path)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "the checkpoint store is full (no space left on its disk)"
    if isinstance(error, OSError) and error.strerror:
        return f"the checkpoint could not be written ({describe(error)})"
    return f"the checkpoint store cannot be reached ({describe(error)})"


def describe(error: BaseException) -> str:
    """An error in words for a studio's page: what failed, never the host's paths or command lines."""
    if isinstance(error, subprocess.CalledProcessError):
        return f"{Path(error.cmd[0]).name} {error.cmd[1]} failed with code {error.returncode}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, OSError):
        return str(error)  # raised here, with words of ours
    return type(error).__name__


def notice_of(body: bytes) -> tuple[str, str]:
    """The message and link of a notice the platform sent the control endpoint (JSON); empty where it has none."""
    try:
        content = json.loads(body or b"{}")
    except ValueError:
        content = None

    def text(name: str) -> str:
        value = content.get(name) if isinstance(content, dict) else None
        return value[:NOTICE_MAX_LENGTH] if isinstance(value, str) else ""

    return text("message"), text("link")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def post(platform_url: str, path: str, credential: str, payload: dict[str, Any]) -> tuple[int, bytes] | None:
    """POST ``payload`` to the platform with ``credential`` as the bearer; its HTTP status and body, or None when
    the platform cannot be reached (tried five times, over a quarter of a minute)."""
    url = urllib.parse.urlsplit(platform_url.rstrip("/") + path)
    headers = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
    connection_class: type[http.client.HTTPConnection] = (
        http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    )
    for attempt in range(5):
        connection = connection_class(url.netloc, timeout=30)
        try:
            connection.request("POST", url.path, body=json.dumps(payload).encode(), headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except OSError as error:
            log.warning("cannot reach the platform at %s (%s); retrying", url.path, error)
            time.sleep(1 + attempt)
        finally:
            connection.close()
    return None


def redeem_ticket(platform_url: str, ticket: str) -> str:
    """The session token, which the platform gives once for the job's start ticket (``protocol.TICKET``). SystemExit
    when it refuses: without the token the supervisor cannot even report, and the platform has said why where it
    knows (a ticket presented twice ends the start)."""
    answer = post(platform_url, TICKETS_PATH, ticket, {})
    if answer is None or answer[0] != 200:
        said = answer[1].decode(errors="replace")[:200] if answer else "the platform cannot be reached"
        log.error("the platform refused this session's start ticket: %s", said)
        raise SystemExit(1)
    token: str = json.loads(answer[1])["token"]
    return token


class Reporter:
    """The session's voice to the platform, with its token: its supervisor's, and its host's before the supervisor
    starts (the image's pull; not a Batch job's host, which has no token). Each report carries the start-up steps as
    this side knows them."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.steps: list[dict[str, str]] = [{"name": PROVISIONING, "state": "succeeded", "message": ""}]

    def report(self, kind: str, **payload: Any) -> int | None:
        """POST a report to the platform; its HTTP status, or None when the platform cannot be reached (or this side
        holds no token to say who it is)."""
        if not self.config.token:
            return None
        answer = post(self.config.platform_url, REPORTS_PATH + kind, self.config.token, payload)
        if answer is None:
            return None
        if answer[0] != 200:
            log.warning("the platform answered %s to %s", answer[0], kind)
        return answer[0]

    def step(self, name: str, state: str, message: str = "") -> None:
        for step in self.steps:
            if step["name"] == name:
                step.update(state=state, message=message)
                break
        else:
            self.steps.append({"name": name, "state": state, "message": message})
        self.report(PROGRESS, steps=self.steps)

    def failed(self, error: "SessionEnded") -> None:
        """Tell the platform the session has ended, and why; the step in progress errored with it."""
        for step in self.steps:
            if step["state"] == "in-progress":
                step.update(state="errored", message=str(error))
        self.report(FAILED, reason=str(error), checkpoint_invalid=error.checkpoint_invalid, steps=self.steps)


class Supervisor(Reporter):
    listening: socket.socket  # the session's port and the control endpoint's, bound as ``run`` begins
    control_listening: socket.socket

    def __init__(self, config: SessionConfig) -> None:
        super().__init__(config)
        self.isolated = config.isolation == "container"
        self.layout = sandbox.Layout(config.session_dir)
        # What checkpoints capture: the container's upper layer, or a plain process's home folder.
        self.layer = self.layout.upper if self.isolated else Path(config.session_dir) / "home"
        self.excluded = sandbox.LAYER_EXCLUDED if self.isolated else ["data"]
        self.store = store_for(config.work_dir)
        self.manifest: snapshot.Manifest | None = (
            None  # the last saved or restored manifest: the next checkpoint only stores changes
        )
        self.checkpoint_lock = threading.Lock()
        self.stopping = threading.Event()
        # Set by SIGTERM's handler, which does nothing else: a handler that logs or starts a thread may find the main
        # thread it interrupted halfway through the same write to stderr ("reentrant call") or holding the same lock.
        self.terminated = threading.Event()
        threading.Thread(target=self.stop_when_terminated, daemon=True).start()
        self.notices = Notices()  # the platform's word to the session's pages
        self.ide_pid: int | None = None  # the container's first process, or the plain process
        self.ide_process: subprocess.Popen[bytes] | None = None
        self.container_created = False
        self.helpers: list[subprocess.Popen[bytes]] = []  # slirp4netns, rclone: they end with this process
        self.unrecorded: dict[str, Any] | None = (
            None  # the last checkpoint's report, until the platform has recorded it
        )

    # Starting

    def run(self) -> None:
        """Start the session, serve it until it ends; returns once it was stopped cleanly."""
        # Both of the session's ports are taken at once: the platform chose them when it planned the session.
        self.listening = socket.create_server((self.config.bind_host, self.config.port))
        self.control_listening = socket.create_server((self.config.bind_host, self.config.control_port))
        # A Batch job's container has no session folder until its supervisor makes one.
        Path(self.config.session_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.isolated:
            # The layer is a sparse file: a host disk with less room than its quota would fill up under the session,
            # which would then see its writes fail long before its quota.
            free_mb = shutil.disk_usage(self.config.session_dir).free // 2**20
            if free_mb < self.config.layer_mb:
                raise SessionEnded(
                    f"The disk of the host the session was placed on has {free_mb} MB free, less than the session's "
                    f"writable layer ({self.config.layer_mb} MB). Ask the workspace's admins to give the compute "
                    "environment's hosts more disk (on AWS Batch, a larger volume in its launch template), then start "
                    "the studio again."
                )
            sandbox.prepare_layer(self.layout, self.config.layer_mb)
        else:
            self.layer.mkdir()
        ide_port = free_port()
        python = sys.executable if self.config.rootfs == "/" else images.SUPERVISOR_PYTHON
        root_dir = "/workspace" if self.isolated else self.layer
        ide = ide_for(self.config.template, python, ide_port, self.config.base_path, root_dir)
        if self.config.restore:
            self.restore()
            # The checkpoint of a session that ended without a final one may hold a save cut short.
            self.undo_unfinished_saves(ide)
        self.step(MOUNTING, "in-progress")
        data_sources = self.mount_data()
        self.step(MOUNTING, "succeeded", ", ".join(m.name for m in self.config.mounts) or "no datasets")
        ide_step = starting_step(self.config.template)
        self.step(ide_step, "in-progress")
        network_fd = None
        if self.isolated:
            network_fd = self.start_container(ide, data_sources)
        else:
            self.start_process(ide)
        gate.serve(
            gate.Gate(
                self.config.token, self.config.base_path, f"127.0.0.1:{ide_port}", ide.strip_prefix, self.notices
            ),
            self.listening,
            network_fd,
        )
        self.wait_until_ready(ide.ready_path)
        self.steps[-1].update(state="succeeded")
        self.serve_control()
        if self.report(READY, steps=self.steps) != 200:
            raise SessionEnded("The platform did not accept this session.")
        if self.config.work_check_seconds:
            threading.Thread(target=self.watch_work, daemon=True).start()
        self.checkpoint()  # the first one, as the session starts
        code = self.wait_for_ide()
        if not self.stopping.is_set():
            raise SessionEnded(self.ended_reason(code))
        self.undo_unfinished_saves(ide)
        self.checkpoint(final=True)
        # The platform may be down right now: the final checkpoint is worth waiting a while for.
        deadline = time.monotonic() + FINAL_REPORT_SECONDS
        while not self.report_unrecorded() and time.monotonic() < deadline:
            time.sleep(UNRECORDED_RETRY_SECONDS)
        log.info("stopped cleanly")

    def restore(self) -> None:
        name = self.config.restore["name"]  # for its errors; the platform names the checkpoint in the step itself
        self.step(RESTORING, "in-progress")
        began = time.monotonic()
        try:
            manifest = snapshot.restore(
                self.layer,
                self.store,
                self.config.restore["manifest_key"],
                self.config.restore["manifest_sha256"],
                keep_setuid=self.isolated,
            )
        except snapshot.CorruptCheckpoint as error:
            raise SessionEnded(
                f"Checkpoint {name} cannot be restored: {error}. It is now marked invalid; start the studio "
                "again to restore the checkpoint before it, or start as new from another checkpoint.",
                checkpoint_invalid=True,
            ) from None
        except OSError as error:
            raise SessionEnded(
                f"Checkpoint {name} could not be read from the work directory ({describe(error)}). "
                "Start the studio again."
            ) from None
        self.manifest = manifest
        files = sum(1 for entry in manifest["entries"] if entry["type"] == "file")
        self.step(RESTORING, "succeeded", f"{files} files in {time.monotonic() - began:.1f} s")

    def undo_unfinished_saves(self, ide: IDE) -> None:
        """Put the files whose save the IDE did not finish back as they were last saved (``saves``)."""
        if ide.save_copy_prefix:
            for path in saves.undo_unfinished(self.layer, ide.save_copy_prefix, self.excluded):
                log.info("%s: its last save was cut short; kept as saved before it", path)

    def mount_data(self) -> dict[str, str | Path]:
        """{dataset name: host folder} for the container to bind; a plain process gets links in its folder."""
        sources: dict[str, str | Path] = {}
        for mount in self.config.mounts:
            if mount.uri.startswith("s3://"):
                if not self.isolated:
                    raise SessionEnded(f"Dataset {mount.name} is on S3, which this compute environment cannot mount.")
                try:
                    self.helpers.append(
                        sandbox.mount_s3(mount.uri, self.layout.data / mount.name, mount.writable, sys.stderr)
                    )
                except OSError as error:
                    raise SessionEnded(f"Dataset {mount.name} could not be mounted: {describe(error)}.") from None
                sources[mount.name] = self.layout.data / mount.name
            elif not os.path.isdir(mount.uri):
                raise SessionEnded(f"The folder of dataset {mount.name} does not exist on this machine.")
            else:
                sources[mount.name] = mount.uri
        if not self.isolated:
            data_dir = self.layer / "data"
            data_dir.mkdir(exist_ok=True)
            for name, source in sources.items():
                (data_dir / name).symlink_to(source)
        return sources

    def start_container(self, ide: IDE, data_sources: dict[str, str | Path]) -> int:
        """Create the container with the IDE as its first process, connect its network, start it; returns a
        descriptor of its network namespace."""
        sandbox.become_subreaper()
        sandbox.mount_root(self.layout, self.config.rootfs)
        writable = {mount.name: mount.writable for mount in self.config.mounts}
        mounts = [sandbox.resolver_mount(self.layout)] + [
            sandbox.bind(source, f"{sandbox.DATA_IN_CONTAINER}/{name}", writable[name])
            for name, source in data_sources.items()
        ]
        # An image's own Python first (pip installs into the session's layer), as the image's PATH says.
        path = (
            os.environ.get("PATH", CONTAINER_PATH)
            if self.config.rootfs == "/"
            else f"{Path(images.SUPERVISOR_PYTHON).parent}:{CONTAINER_PATH}"
        )
        environ = {"PATH": path, "HOME": "/root", "LANG": "C.UTF-8", **ide.environ}
        config = sandbox.oci_config(
            container_id=self.config.container_id,
            args=ide.command,
            env=environ,
            cwd="/workspace",
            cpus=self.config.cpus,
            memory_mb=self.config.memory_mb,
            mounts=mounts,
            hidden=self.config.hidden,
        )
        try:
            self.container_created = True
            self.ide_pid = sandbox.create(self.layout, config, self.config.container_id, sys.stderr)
            network_fd = os.open(f"/proc/{self.ide_pid}/ns/net", os.O_RDONLY)
            self.helpers.append(sandbox.connect_network(self.ide_pid, sys.stderr).process)
            sandbox.start(self.config.container_id, sys.stderr)
        except (OSError, subprocess.CalledProcessError) as error:
            raise SessionEnded(
                f"The session's container could not start ({describe(error)}). Start the studio again."
            ) from None
        return network_fd

    def start_process(self, ide: IDE) -> None:
        """The IDE as a plain process (no isolation), without the supervisor's environment."""
        home = self.layer
        site_packages = home / ".local/lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        environ = {
            "PATH": f"{home / '.local/bin'}:{os.environ.get('PATH', CONTAINER_PATH)}",
            "PYTHONPATH": str(site_packages),
            "PIP_PREFIX": str(home / ".local"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            **ide.environ,
        }
        try:
            # A group of its own (terminals, kernels) to stop as one; it ends with the supervisor, however that ends.
            self.ide_process = subprocess.Popen(
                ide.command,
                env=environ,
                cwd=home,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=sandbox.die_with_parent,
            )
        except OSError as error:
            raise SessionEnded(f"The IDE could not start ({describe(error)}).") from None
        self.ide_pid = self.ide_process.pid

    def ide_exit_code(self) -> int | None:
        """The IDE's exit code once it has ended, else None."""
        assert self.ide_pid is not None  # asked once the IDE has started
        try:
            pid, status = os.waitpid(self.ide_pid, os.WNOHANG)
        except ChildProcessError:
            return -1
        return os.waitstatus_to_exitcode(status) if pid else None

    def wait_until_ready(self, ready_path: str) -> None:
        url = f"http://127.0.0.1:{self.listening.getsockname()[1]}{self.config.base_path}{ready_path}"
        request = urllib.request.Request(url, headers={"X-Studios-Session-Token": self.config.token})
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            code = self.ide_exit_code()
            if code is not None:
                if self.stopping.is_set():
                    raise SystemExit(0)
                raise SessionEnded(self.ended_reason(code, "while starting"))
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SessionEnded(f"The IDE did not answer within {READY_TIMEOUT_SECONDS} seconds.")

    def wait_for_ide(self) -> int:
        """Until the IDE ends. A helper that ends first (the network, a dataset's mount) ends the session, and so
        does the kernel's out-of-memory killer, whichever of the session's processes it chose."""
        retried = time.monotonic()
        while (code := self.ide_exit_code()) is None:
            if self.unrecorded is not None and time.monotonic() - retried > UNRECORDED_RETRY_SECONDS:
                with self.checkpoint_lock:
                    self.report_unrecorded()
                retried = time.monotonic()
            if not self.stopping.is_set():
                if self.isolated and sandbox.oom_kills(self.config.container_id):
                    raise SessionEnded(self.ended_reason(code))
                if any(helper.poll() is not None for helper in self.helpers):
                    raise SessionEnded(
                        "The session's network (slirp4netns) or a dataset's mount (rclone) ended unexpectedly. "
                        "Start the studio again; its last checkpoint is kept."
                    )
            time.sleep(WATCH_SECONDS)
        return code

    def ended_reason(self, code: int | None, when: str = "unexpectedly") -> str:
        if self.isolated and sandbox.oom_kills(self.config.container_id):
            return f"The session ran out of memory (limit {self.config.memory_mb} MB). Start it again with more memory."
        return f"The IDE exited {when} with code {code}. Start the studio again; its last checkpoint is kept."

    # Running

    def checkpoint(self, final: bool = False) -> bool:
        """Save the writable layer from outside the sandbox and tell the platform, one at a time; whether it was
        saved and recorded. A checkpoint that fails is reported with why; one the platform could not record
        (its database down) is reported again until it is (``report_unrecorded``)."""
        with self.checkpoint_lock:
            began = time.monotonic()
            try:
                saved = snapshot.take(
                    self.layer,
                    self.store,
                    previous=self.manifest,
                    excluded=self.excluded,
                    manifest_prefix=self.config.manifest_prefix,
                )
            except Exception as error:  # the store full or unreachable, the layer unreadable: say so, carry on
                log.exception("checkpoint failed")
                self.report(CHECKPOINT_FAILED, reason=checkpoint_failure(error))
                return False
            self.manifest = saved.manifest
            usage = os.statvfs(self.layer)
            self.unrecorded = {
                "manifest_key": saved.manifest_key,
                "manifest_sha256": saved.manifest_sha256,
                "size_bytes": saved.size_bytes,
                "final": final,
                "layer_used_bytes": (usage.f_blocks - usage.f_bfree) * usage.f_frsize
                if self.isolated
                else saved.size_bytes,
                "layer_total_bytes": usage.f_blocks * usage.f_frsize if self.isolated else 0,
                "seconds": round(time.monotonic() - began, 3),
            }
            recorded = self.report_unrecorded()
            log.info(
                "checkpoint%s: %d bytes in the layer, %d stored, %.2f s, recorded: %s",
                " (final)" if final else "",
                saved.size_bytes,
                saved.stored_bytes,
                time.monotonic() - began,
                recorded,
            )
            return recorded

    def report_unrecorded(self) -> bool:
        """Report the last checkpoint saved but not yet recorded, if any; whether none is left."""
        if self.unrecorded is not None:
            status = self.report(CHECKPOINT, **self.unrecorded)
            if status is not None and status < 500:  # recorded, or refused for good (the session has ended)
                self.unrecorded = None
        return self.unrecorded is None

    def watch_work(self) -> None:
        """Tell the platform, after each look that saw the IDE working, that the studio is not idle (``work``)."""
        gate_url = f"http://127.0.0.1:{self.listening.getsockname()[1]}{self.config.base_path}"
        container = self.config.container_id if self.isolated else ""
        watch = work.WorkWatch(self.config.template, gate_url, self.config.token, container)
        while not self.stopping.wait(self.config.work_check_seconds):
            if watch.working():
                self.report(WORKING)
            if watch.looks % 60 == 1:
                log.info("work checks: %d, %.2f ms of CPU each", watch.looks, 1000 * watch.cpu_spent / watch.looks)

    def serve_control(self) -> None:
        """The platform's way in, with the session token: POST /checkpoint saves one now and answers whether it
        was saved and recorded; POST /stop stops the session as SIGTERM does, without waiting, and tells its pages
        the message of its JSON body ({"message", "link"}); POST /notice tells them a warning (the same body)."""
        supervisor = self

        class Control(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                supplied = self.headers.get("Authorization", "").removeprefix("Bearer ").encode()
                if not hmac.compare_digest(supplied, supervisor.config.token.encode()):
                    self.send_error(403)
                    return
                body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 4 * NOTICE_MAX_LENGTH))
                if self.path == "/checkpoint":
                    self.answer(200, {"recorded": supervisor.checkpoint()})
                elif self.path == "/stop":
                    supervisor.stop(*notice_of(body))
                    self.answer(202, {"stopping": True})
                elif self.path == "/notice":
                    supervisor.notices.warn(*notice_of(body))
                    self.answer(200, {"told": True})
                else:
                    self.send_error(404)

            def answer(self, status: int, content: dict[str, bool]) -> None:
                body = json.dumps(content).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.info("control: " + format, *args)

        server = ThreadingHTTPServer(self.control_listening.getsockname()[:2], Control, bind_and_activate=False)
        server.socket.close()
        server.socket = self.control_listening  # bound and listening since the session started
        server.server_name, server.server_port = self.control_listening.getsockname()[:2]
        threading.Thread(target=server.serve_forever, daemon=True).start()

    # Ending

    def stop_ide(self) -> None:
        """SIGTERM to the IDE, SIGKILL if it is still there after a while."""
        if self.isolated:
            sandbox.signal_container(self.config.container_id, "TERM")
        elif self.ide_process is not None:
            os.killpg(self.ide_process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_IDE_SECONDS
        while time.monotonic() < deadline and Path(f"/proc/{self.ide_pid}").exists():
            time.sleep(0.1)
        if self.isolated:
            sandbox.signal_container(self.config.container_id, "KILL")
        elif self.ide_process is not None and self.ide_process.poll() is None:
            os.killpg(self.ide_process.pid, signal.SIGKILL)

    def stop(self, message: str = "", link: str = "") -> None:
        """Tell the pages why the session stops and let them save, stop the IDE; the main thread then takes the final
        checkpoint and ends the session."""
        if not self.stopping.is_set():
            log.info("stopping: the pages save, the IDE stops, then a final checkpoint")
            self.stopping.set()
            threading.Thread(target=self.save_pages_and_stop_ide, args=(message, link), daemon=True).start()

    def save_pages_and_stop_ide(self, message: str, link: str) -> None:
        """The pages open in the session save their documents first (at most SAVE_SECONDS): the final checkpoint then
        has them. The platform hears how many did and did not, to say so in the stop's record."""
        began = time.monotonic()
        saved, unsaved = self.notices.save_pages(message or STOPPING_MESSAGE, link, SAVE_SECONDS)
        if saved or unsaved:
            log.info("pages: %d saved their documents, %d did not, in %.2f s", saved, unsaved, time.monotonic() - began)
            self.report(PAGES_SAVED, saved=saved, unsaved=unsaved)
        self.stop_ide()

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.ide_pid is None:
            self.stopping.set()
            raise SystemExit(0)  # nothing has started yet: nothing to save
        self.terminated.set()

    def stop_when_terminated(self) -> None:
        self.terminated.wait()
        self.stop()

    def tear_down(self) -> None:
        """Remove everything the session had on this host: container, helpers, mounts, layer. Idempotent."""
        if self.isolated:
            if self.container_created:
                sandbox.delete(self.config.container_id)
        elif self.ide_process is not None and self.ide_process.poll() is None:
            os.killpg(self.ide_process.pid, signal.SIGKILL)
            self.ide_process.wait()
        for helper in self.helpers:
            helper.kill()
            helper.wait()
        self.helpers = []
        if self.isolated:
            sandbox.remove(self.layout)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    config = SessionConfig.from_environ(os.environ)
    if os.environ.get(TICKET):
        config = replace(config, token=redeem_ticket(config.platform_url, os.environ[TICKET]))
    supervisor = Supervisor(config)
    signal.signal(signal.SIGTERM, supervisor.on_sigterm)
    try:
        supervisor.run()
    except Exception as error:
        if not isinstance(error, SessionEnded):
            log.exception("the session failed")
            error = SessionEnded(
                f"The session failed on its host ({describe(error)}). Start the studio again; its last checkpoint is kept."
            )
        log.error("%s", error)
        # Everything is gone before the platform hears the session has ended.
        supervisor.tear_down()
        supervisor.failed(error)
        sys.exit(1)
    finally:
        supervisor.tear_down()
