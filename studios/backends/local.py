"""The local backend: a session is the session agent running as a supervised child process.

The agent runs in its own process group with a clean environment (no platform secrets), so
that it outlives a restart of the worker that launched it and can be found again by pid.
Isolation in an OCI runtime, mounts and limits come with the isolation issue.
"""

import importlib.util
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen

from .base import ComputeBackend, SessionSpec, SessionState

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _start_time(pid):
    """The process's start time in clock ticks since boot, to tell it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# How each template's IDE is found on this machine, and how to install it when it is missing.
IDE_INSTALL_HINTS = {
    "jupyterlab": "install JupyterLab into the platform's Python (pip install jupyterlab)",
    "rstudio": "RStudio Server is not in Debian's archive; it needs the isolated sessions that run template images",
    "vscode": "VS Code (code-server) needs the isolated sessions that run template images",
}


class LocalBackend(ComputeBackend):
    def __init__(self, sessions_dir):
        self.sessions_dir = Path(sessions_dir)

    def template_problem(self, template: str) -> str:
        if template == "jupyterlab" and importlib.util.find_spec("jupyterlab") is not None:
            return ""
        return f"Not installed on this compute environment: {IDE_INSTALL_HINTS[template]}."

    def launch(self, spec: SessionSpec) -> dict:
        session_dir = self.sessions_dir / spec.name
        home = session_dir / "home"
        # Every start gets a fresh writable layer: what was there before comes back only from a checkpoint.
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        # Without an isolating runtime, the writable layer is the session's home: pip installs
        # into its ~/.local, which the session's Python finds first.
        site_packages = home / ".local/lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        env = {
            "PATH": f"{home / '.local/bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONPATH": f"{site_packages}:{PROJECT_ROOT}",
            "PIP_PREFIX": str(home / ".local"),
            "HOME": str(home),
            "STUDIOS_SESSION_DIR": str(session_dir),
            **{name: value for name, value in os.environ.items() if name.startswith("AWS_")},
            **spec.environment(),
        }
        log_path = session_dir / "agent.log"
        with open(log_path, "ab") as log_file:
            process = Popen(
                [sys.executable, "-m", "studios.agent"],
                cwd=session_dir,
                env=env,
                stdin=DEVNULL,
                stdout=log_file,
                stderr=STDOUT,
                start_new_session=True,
            )
        return {"pid": process.pid, "started": _start_time(process.pid), "log": str(log_path)}

    def _alive(self, handle):
        pid = handle.get("pid")
        if not pid:
            return False
        _reap(pid)
        started = _start_time(pid)
        return started is not None and started == handle.get("started")

    def poll(self, handle: dict) -> SessionState:
        if self._alive(handle):
            return SessionState(alive=True)
        return SessionState(
            alive=False,
            reason=f"The session's process ended unexpectedly; its log is {handle.get('log')}. Start the studio again.",
        )

    def terminate(self, handle: dict, timeout: float) -> None:
        """SIGTERM (the agent saves a final checkpoint), SIGKILL after ``timeout``, then drop the layer."""
        if self._alive(handle):
            pid = handle["pid"]
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(handle) and time.monotonic() < deadline:
                time.sleep(0.1)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
        if handle.get("log"):
            shutil.rmtree(Path(handle["log"]).parent / "home", ignore_errors=True)
