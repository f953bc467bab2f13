"""The session agent: the first process of every session, on every backend.

It has no Django dependency (standard library only) so that it runs inside any image. It
prepares the session, starts the template's IDE on the base path the proxy expects, reports
progress and readiness to the platform with the session's token, supervises the IDE, and
stops it cleanly on SIGTERM.

Configuration comes from the environment: STUDIOS_TEMPLATE, STUDIOS_BASE_PATH,
STUDIOS_SESSION_TOKEN, STUDIOS_CALLBACK_URL, STUDIOS_SESSION_DIR, STUDIOS_MOUNTS (JSON).
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("studios.agent")

READY_TIMEOUT_SECONDS = 180
IDE_NAMES = {"jupyterlab": "JupyterLab", "rstudio": "RStudio Server", "vscode": "VS Code"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ide_command(template, port, base_path, root_dir):
    if template == "jupyterlab":
        return [
            sys.executable, "-m", "jupyterlab",
            "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={port}",
            f"--ServerApp.base_url={base_path}",
            "--ServerApp.identity_provider_class=studios.agent.jupyter_identity.PlatformIdentityProvider",
            f"--ServerApp.root_dir={root_dir}",
            # Requests arrive through the platform's proxy with the platform's Host header.
            "--ServerApp.allow_remote_access=True",
            # A closed network: no update checks or news feeds.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]  # fmt: skip
    raise SystemExit(f"template {template} is not available on this compute environment")


class Agent:
    def __init__(self, environ):
        self.template = environ["STUDIOS_TEMPLATE"]
        self.base_path = environ["STUDIOS_BASE_PATH"]
        self.token = environ["STUDIOS_SESSION_TOKEN"]
        self.callback_url = environ["STUDIOS_CALLBACK_URL"].rstrip("/")
        self.session_dir = Path(environ["STUDIOS_SESSION_DIR"])
        self.mounts = json.loads(environ.get("STUDIOS_MOUNTS", "[]"))
        self.ide = None
        self.stopping = False
        self.steps = []

    def report(self, what, **payload):
        request = urllib.request.Request(
            f"{self.callback_url}/{what}",
            data=json.dumps(payload).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        for attempt in range(5):
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                log.warning("platform answered %s to %s", error.code, what)
                return error.code
            except OSError as error:
                log.warning("cannot reach the platform for %s (%s); retrying", what, error)
                time.sleep(1 + attempt)
        return None

    def step(self, name, state, message=""):
        for step in self.steps:
            if step["name"] == name:
                step.update(state=state, message=message)
                break
        else:
            self.steps.append({"name": name, "state": state, "message": message})
        self.report("progress", steps=self.steps)

    def fail(self, reason):
        log.error("%s", reason)
        for step in self.steps:
            if step["state"] == "in-progress":
                step.update(state="errored", message=reason)
        self.report("failed", reason=reason)
        raise SystemExit(1)

    def mount_data(self, root_dir):
        """Without an isolating runtime, datasets appear as links under the session's data folder."""
        data_dir = root_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        for mount in self.mounts:
            link = data_dir / mount["name"]
            if mount["uri"].startswith("s3://"):
                self.fail(f"Dataset {mount['name']} is on S3, which this compute environment cannot mount yet.")
            if not link.is_symlink():
                link.symlink_to(mount["uri"])

    def wait_until_ready(self, port):
        url = f"http://127.0.0.1:{port}{self.base_path}api/status"
        request = urllib.request.Request(url, headers={"X-Studios-Session-Token": self.token})
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.ide.poll() is not None:
                self.fail(f"The IDE exited with code {self.ide.returncode} while starting; see the session log.")
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.fail(f"The IDE did not answer within {READY_TIMEOUT_SECONDS} seconds.")

    def run(self):
        signal.signal(signal.SIGTERM, self.on_sigterm)
        self.steps = [{"name": "Provisioning compute", "state": "succeeded", "message": ""}]
        root_dir = self.session_dir / "workspace"
        Path(os.environ.get("HOME", self.session_dir / "home")).mkdir(parents=True, exist_ok=True)
        self.step("Mounting data", "in-progress")
        self.mount_data(root_dir)
        self.step("Mounting data", "succeeded", ", ".join(m["name"] for m in self.mounts) or "no datasets")
        ide_step = f"Starting {IDE_NAMES.get(self.template, self.template)}"
        self.step(ide_step, "in-progress")
        port = free_port()
        self.ide = subprocess.Popen(ide_command(self.template, port, self.base_path, root_dir))
        self.wait_until_ready(port)
        self.steps[-1].update(state="succeeded")
        if self.report("ready", endpoint=f"http://127.0.0.1:{port}", steps=self.steps) != 200:
            self.stop_ide()
            raise SystemExit("the platform did not accept this session; exiting")
        code = self.ide.wait()
        if not self.stopping:
            self.report("failed", reason=f"The IDE exited unexpectedly with code {code}. Start the studio again.")
            raise SystemExit(code or 1)

    def stop_ide(self):
        if self.ide is not None and self.ide.poll() is None:
            self.ide.terminate()
            try:
                self.ide.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.ide.kill()

    def on_sigterm(self, signum, frame):
        log.info("SIGTERM: stopping the IDE")
        self.stopping = True
        self.stop_ide()
        raise SystemExit(0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    Agent(os.environ).run()
