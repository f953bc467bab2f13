"""The session agent: the first process of every session, on every backend.

It has no Django dependency so that it runs inside any image. It restores the session's
checkpoint into the writable layer, prepares the data mounts, starts the template's IDE on
the base path the proxy expects, reports progress and readiness to the platform with the
session's token, takes checkpoints when the platform asks (and a final one when it gets
SIGTERM), and stops the IDE cleanly.

Configuration comes from the environment: STUDIOS_TEMPLATE, STUDIOS_BASE_PATH,
STUDIOS_SESSION_TOKEN, STUDIOS_CALLBACK_URL, STUDIOS_WORK_DIR, STUDIOS_MOUNTS and
STUDIOS_RESTORE (JSON); STUDIOS_LAYER (the writable layer checkpoints capture; HOME by
default) and STUDIOS_LAYER_EXCLUDE (JSON: paths in it never saved); STUDIOS_ROOT_DIR (the
IDE's folder; HOME by default); STUDIOS_DATA_MOUNTED=1 when the runtime has mounted the
datasets at /workspace/data already.

``python -m studios.agent restore`` only restores the checkpoint into the layer and prints
its start-up steps as JSON: an isolating backend runs it on the host before it mounts the
layer under the container's root. The agent in the container then gets STUDIOS_RESTORED=1
and those steps in STUDIOS_EARLIER_STEPS.

STUDIOS_BIND_HOST is the address the IDE and the control endpoint listen on: 127.0.0.1 unless the
platform reaches the session from another host or network namespace (AWS Batch, containers: 0.0.0.0),
on free ports or on STUDIOS_PORT and STUDIOS_CONTROL_PORT; STUDIOS_ADVERTISE_HOST is the address the
platform reaches them at (by default this host's address on the route to the platform). Both require
the session token on every request: JupyterLab checks it itself; code-server and RStudio Server
cannot, so the agent's gate (``gate.py``) listens there instead and forwards to them.
STUDIOS_PLATFORM_SOCKET, when set, is a Unix socket that leads to the platform: reports go there.
"""

import hmac
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from checkpoints import snapshot
from checkpoints.store import store_for

log = logging.getLogger("studios.agent")

READY_TIMEOUT_SECONDS = 180
IDE_NAMES = {"jupyterlab": "JupyterLab", "rstudio": "RStudio Server", "vscode": "VS Code"}


def free_port(host):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP to the platform over a Unix socket (a container without a route to the platform's address)."""

    def __init__(self, socket_path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def reachable_address(bind_host, platform_url):
    """The address the platform can reach this session at: for a wildcard bind, this host's address on the
    route to the platform (no packet is sent: connecting a UDP socket only picks the route)."""
    if bind_host != "0.0.0.0":
        return bind_host
    platform = urllib.parse.urlsplit(platform_url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((platform.hostname, platform.port or 80))
        return probe.getsockname()[0]


class IDE:
    """How the agent runs one template's IDE: its command, and where the gate forwards to when the IDE
    cannot check the session token itself (None: the IDE serves the proxy directly and checks it)."""

    def __init__(self, command, ready_path, upstream=None, environ=None):
        self.command, self.ready_path, self.upstream, self.environ = command, ready_path, upstream, environ or {}


def ide_for(template, host, port, base_path, root_dir):
    """The IDE of ``template``, to be reached at ``host:port`` under ``base_path``."""
    if template == "jupyterlab":
        command = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser", "--allow-root",
            f"--ip={host}", f"--port={port}",
            f"--ServerApp.base_url={base_path}",
            "--ServerApp.identity_provider_class=studios.agent.jupyter_identity.PlatformIdentityProvider",
            f"--ServerApp.root_dir={root_dir}",
            # Requests arrive through the platform's proxy with the platform's Host header.
            "--ServerApp.allow_remote_access=True",
            # A closed network: no update checks or news feeds.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]  # fmt: skip
        return IDE(command, "api/status")
    if template == "vscode":
        # A folder only its owner can enter, in /run where it may: a tmpfs in containers, never checkpointed.
        runtime_dir = "/run" if os.access("/run", os.W_OK) else None
        socket_path = os.path.join(tempfile.mkdtemp(prefix="studios-ide-", dir=runtime_dir), "code-server.sock")
        command = [
            "code-server", "--socket", socket_path, "--auth", "none",
            "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
            "--disable-getting-started-override",  # its welcome page advertises Coder's product otherwise
            "--abs-proxy-base-path", base_path.rstrip("/"),
            str(root_dir),
        ]  # fmt: skip
        return IDE(command, "healthz", upstream=("unix", socket_path))
    if template == "rstudio":
        # RStudio Server cannot listen on a socket: a loopback port that only the gate uses.
        ide_port = free_port("127.0.0.1")
        command = [
            "/usr/lib/rstudio-server/bin/rserver", "--server-daemonize=0", "--www-address=127.0.0.1", f"--www-port={ide_port}",
            "--auth-none=1", "--server-user=rstudio", f"--www-root-path={base_path}",
        ]  # fmt: skip
        return IDE(command, "", upstream=("tcp", f"127.0.0.1:{ide_port}"), environ={"USER": "rstudio"})
    raise SystemExit(f"template {template} is not available on this compute environment")


class Agent:
    def __init__(self, environ):
        self.template = environ["STUDIOS_TEMPLATE"]
        self.base_path = environ["STUDIOS_BASE_PATH"]
        self.token = environ["STUDIOS_SESSION_TOKEN"]
        self.callback_url = environ["STUDIOS_CALLBACK_URL"].rstrip("/")
        self.store = store_for(environ["STUDIOS_WORK_DIR"])
        self.mounts = json.loads(environ.get("STUDIOS_MOUNTS", "[]"))
        self.restore_point = json.loads(environ.get("STUDIOS_RESTORE", "{}"))
        self.restored = environ.get("STUDIOS_RESTORED") == "1"
        self.layer = Path(environ.get("STUDIOS_LAYER", environ["HOME"]))
        self.layer_excluded = json.loads(environ.get("STUDIOS_LAYER_EXCLUDE", '["data"]'))
        self.root_dir = Path(environ.get("STUDIOS_ROOT_DIR", environ["HOME"]))
        self.data_mounted = environ.get("STUDIOS_DATA_MOUNTED") == "1"
        self.platform_socket = environ.get("STUDIOS_PLATFORM_SOCKET")
        self.bind_host = environ.get("STUDIOS_BIND_HOST", "127.0.0.1")
        self.address = environ.get("STUDIOS_ADVERTISE_HOST") or reachable_address(self.bind_host, self.callback_url)
        self.port = int(environ.get("STUDIOS_PORT", 0)) or free_port(self.bind_host)
        self.control_port = int(environ.get("STUDIOS_CONTROL_PORT", 0))
        self.ide = None
        self.stopping = False
        self.steps = [{"name": "Provisioning compute", "state": "succeeded", "message": ""}]
        self.steps += json.loads(environ.get("STUDIOS_EARLIER_STEPS", "[]"))
        self.manifest = None  # the last saved or restored manifest: the next checkpoint only stores changes
        self.checkpoint_lock = threading.Lock()
        self.restoring_only = False

    def report(self, what, **payload):
        """POST to the platform's session API; its status, or None when the platform cannot be reached."""
        url = urllib.parse.urlsplit(f"{self.callback_url}/{what}")
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for attempt in range(5):
            if self.platform_socket:
                connection = UnixHTTPConnection(self.platform_socket, timeout=30)
            elif url.scheme == "https":
                connection = http.client.HTTPSConnection(url.netloc, timeout=30)
            else:
                connection = http.client.HTTPConnection(url.netloc, timeout=30)
            try:
                connection.request("POST", url.path, body=json.dumps(payload).encode(), headers=headers)
                status = connection.getresponse().status
            except OSError as error:
                log.warning("cannot reach the platform for %s (%s); retrying", what, error)
                time.sleep(1 + attempt)
                continue
            finally:
                connection.close()
            if status != 200:
                log.warning("platform answered %s to %s", status, what)
            return status
        return None

    def step(self, name, state, message=""):
        for step in self.steps:
            if step["name"] == name:
                step.update(state=state, message=message)
                break
        else:
            self.steps.append({"name": name, "state": state, "message": message})
        self.report("progress", steps=self.steps)

    def fail(self, reason, **details):
        log.error("%s", reason)
        for step in self.steps:
            if step["state"] == "in-progress":
                step.update(state="errored", message=reason)
        if self.restoring_only:
            # The backend that ran this restore reports the failure once it has removed what it prepared, so the
            # studio never looks ended while its layer is still mounted.
            self.report("progress", steps=self.steps)
            print(json.dumps({"reason": reason, **details}))
        else:
            self.report("failed", reason=reason, **details)
        raise SystemExit(1)

    def restore(self):
        name = self.restore_point["name"]
        self.step("Restoring checkpoint", "in-progress", name)
        began = time.monotonic()
        try:
            self.manifest = snapshot.restore(
                self.layer, self.store, self.restore_point["manifest_key"], self.restore_point["manifest_sha256"]
            )
        except snapshot.CorruptCheckpoint as error:
            self.fail(
                f"Checkpoint {name} cannot be restored: {error}. It is now marked invalid; start the studio "
                "again to restore the checkpoint before it, or start as new from another checkpoint.",
                checkpoint_invalid=True,
            )
        except OSError as error:
            self.fail(f"Checkpoint {name} could not be read from the work directory: {error}. Start the studio again.")
        files = sum(1 for entry in self.manifest["entries"] if entry["type"] == "file")
        self.step("Restoring checkpoint", "succeeded", f"{name}: {files} files in {time.monotonic() - began:.1f} s")

    def checkpoint(self, final=False):
        """Save the writable layer and tell the platform; one at a time."""
        with self.checkpoint_lock:
            began = time.monotonic()
            saved = snapshot.take(self.layer, self.store, previous=self.manifest, excluded=self.layer_excluded)
            self.manifest = saved.manifest
            status = self.report(
                "checkpoint",
                manifest_key=saved.manifest_key,
                manifest_sha256=saved.manifest_sha256,
                size_bytes=saved.size_bytes,
                final=final,
            )
            log.info(
                "checkpoint%s: %d bytes in the layer, %d stored, %.2f s, platform answered %s",
                " (final)" if final else "", saved.size_bytes, saved.stored_bytes, time.monotonic() - began, status,
            )  # fmt: skip
            return {"size_bytes": saved.size_bytes, "stored_bytes": saved.stored_bytes, "recorded": status == 200}

    def mount_data(self):
        """Check the runtime's mounts, or, without an isolating runtime, link the datasets into the IDE's folder."""
        if self.data_mounted:
            missing = [m["name"] for m in self.mounts if not os.path.isdir(f"/workspace/data/{m['name']}")]
            if missing:
                self.fail(f"Datasets {', '.join(missing)} are not mounted; check that their paths exist.")
            return
        data_dir = self.root_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        for mount in self.mounts:
            link = data_dir / mount["name"]
            if mount["uri"].startswith("s3://"):
                self.fail(f"Dataset {mount['name']} is on S3, which this compute environment cannot mount yet.")
            if not link.is_symlink():
                link.symlink_to(mount["uri"])

    def wait_until_ready(self, ready_path):
        url = f"http://{self.address}:{self.port}{self.base_path}{ready_path}"
        request = urllib.request.Request(url, headers={"X-Studios-Session-Token": self.token})
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.ide.poll() is not None:
                if self.stopping:
                    raise SystemExit(0)
                self.fail(f"The IDE exited with code {self.ide.returncode} while starting; see the session log.")
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.fail(f"The IDE did not answer within {READY_TIMEOUT_SECONDS} seconds.")

    def serve_control(self):
        """The platform's way in: POST /checkpoint with the session token."""
        agent = self

        class Control(BaseHTTPRequestHandler):
            def do_POST(self):
                supplied = self.headers.get("Authorization", "").removeprefix("Bearer ").encode()
                if not hmac.compare_digest(supplied, agent.token.encode()):
                    self.send_error(403)
                    return
                if self.path != "/checkpoint":
                    self.send_error(404)
                    return
                body = json.dumps(agent.checkpoint()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):
                log.info("control: " + format, *args)

        server = ThreadingHTTPServer((self.bind_host, self.control_port), Control)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://{self.address}:{server.server_address[1]}"

    def restore_only(self):
        self.restoring_only = True
        self.layer.mkdir(parents=True, exist_ok=True)
        if self.restore_point:
            self.restore()
        print(json.dumps(self.steps[1:]))

    def run(self):
        signal.signal(signal.SIGTERM, self.on_sigterm)
        self.layer.mkdir(parents=True, exist_ok=True)
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if self.restore_point and self.restored:
            # Restored before this process started: only what the next checkpoint builds on.
            point = self.restore_point
            self.manifest = snapshot.load_manifest(self.store, point["manifest_key"], point["manifest_sha256"])
        elif self.restore_point:
            self.restore()
        self.step("Mounting data", "in-progress")
        self.mount_data()
        self.step("Mounting data", "succeeded", ", ".join(m["name"] for m in self.mounts) or "no datasets")
        ide_step = f"Starting {IDE_NAMES.get(self.template, self.template)}"
        self.step(ide_step, "in-progress")
        ide = ide_for(self.template, self.bind_host, self.port, self.base_path, self.root_dir)
        environ = os.environ.copy()
        if ide.upstream is not None:
            from . import gate  # its libraries are needed only for the IDEs it fronts

            # The IDE and what it starts (terminals, extensions) never see the token: the gate checks it.
            environ = {name: value for name, value in environ.items() if not name.startswith("STUDIOS_")}
            listening = socket.create_server((self.bind_host, self.port))
            gate.serve(gate.Gate(self.token, self.base_path, ide.upstream), listening)
        self.ide = subprocess.Popen(ide.command, env={**environ, **ide.environ}, cwd=self.root_dir)
        self.wait_until_ready(ide.ready_path)
        self.steps[-1].update(state="succeeded")
        control = self.serve_control()
        endpoint = f"http://{self.address}:{self.port}"
        ready = self.report("ready", endpoint=endpoint, agent_endpoint=control, steps=self.steps)
        if ready != 200:
            self.stop_ide()
            raise SystemExit("the platform did not accept this session; exiting")
        self.checkpoint()  # the first one, as the session starts
        code = self.ide.wait()
        if not self.stopping:
            self.report("failed", reason=f"The IDE exited unexpectedly with code {code}. Start the studio again.")
            raise SystemExit(code or 1)
        self.checkpoint(final=True)
        log.info("stopped cleanly")

    def stop_ide(self):
        if self.ide is not None and self.ide.poll() is None:
            self.ide.terminate()
            try:
                self.ide.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.ide.kill()

    def on_sigterm(self, signum, frame):
        """Stop the IDE; the main thread then takes the final checkpoint and exits."""
        log.info("SIGTERM: stopping the IDE, then saving a final checkpoint")
        self.stopping = True
        if self.ide is None or self.ide.poll() is not None:
            raise SystemExit(0)  # nothing has started yet: nothing to save
        threading.Thread(target=self.stop_ide, daemon=True).start()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    agent = Agent(os.environ)
    if sys.argv[1:] == ["restore"]:
        agent.restore_only()
    else:
        agent.run()
