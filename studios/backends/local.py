"""The local backend: sessions on this machine.

Where the host allows it (Linux, root, runc or crun installed), a session is a container
(see ``container.py``): its own mount, PID and network namespaces, an overlay root with a fresh
5 GB writable layer, cgroup limits, datasets bind-mounted at /workspace/data. Elsewhere it falls
back to the session agent as a plain child process whose writable layer is its home folder,
and says so: no isolation, no limits, no read-only mounts.

Either way the agent runs in its own process group with a clean environment (no platform
secrets), so that it outlives a restart of the worker that launched it and is found again by
pid.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from ..agent.__main__ import free_port
from . import container
from .base import BackendError, ComputeBackend, SessionFailed, SessionSpec, SessionState

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


def _socat_address(url):
    """socat's address for the platform at ``url``: TLS for https."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return f"OPENSSL:{parts.hostname}:{parts.port or 443}"
    return f"TCP:{parts.hostname}:{parts.port or 80}"


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _running(pid, started):
    """Whether process ``pid`` is still the one that started at ``started`` (reaping it if it is our dead child)."""
    _reap(pid)
    current = _start_time(pid)
    return current is not None and current == started


# Where each template's IDE is looked for in the session's root filesystem, and how to get it there.
IDE_BINARIES = {
    "jupyterlab": ("opt/studios/venv/bin/jupyter-lab",),  # on the host: the platform's own JupyterLab
    "vscode": ("usr/bin/code-server", "usr/local/bin/code-server"),
    "rstudio": ("usr/lib/rstudio-server/bin/rserver",),
}
IDE_INSTALL_HINTS = {
    "jupyterlab": "install JupyterLab into the platform's Python (pip install jupyterlab)",
    "vscode": "install code-server on this machine (images/vscode/install-code-server.sh, from the npm "
    "registry), or set a root filesystem that has it for the template (STUDIOS_TEMPLATE_ROOTFS)",
    "rstudio": "RStudio Server is not in Debian's archive; export the RStudio image (images/rstudio) into a "
    "folder and set it as the template's root filesystem (STUDIOS_TEMPLATE_ROOTFS)",
}
# A template root filesystem other than the host's runs the agent the way the images do: its own Python
# at this path, with the platform's agent code mounted read-only beside it.
ROOTFS_AGENT_HOME = "/opt/studios"
ROOTFS_PYTHON = f"{ROOTFS_AGENT_HOME}/venv/bin/python"


class LocalBackend(ComputeBackend):
    def __init__(self, sessions_dir, isolation="auto", hidden=(), layer_quota_mb=5120, rootfs=None):
        """``isolation``: "auto" (containers when the host allows) or "off"; ``hidden``: host paths sessions never
        see; ``rootfs``: a root filesystem folder per template (the host's ``/`` for the others)."""
        self.sessions_dir = Path(sessions_dir)
        self.rootfs = rootfs or {}
        self.isolation_problem = container.isolation_problem() if isolation == "auto" else "isolation is turned off"
        self.hidden = [str(path) for path in hidden]
        self.layer_quota_mb = layer_quota_mb

    @property
    def isolated(self):
        return not self.isolation_problem

    def template_problem(self, template: str) -> str:
        rootfs = Path(self.rootfs.get(template, "/"))
        if rootfs != Path("/"):
            if not self.isolated:
                return f"Its root filesystem {rootfs} needs isolated sessions, which this host cannot run: {self.isolation_problem}."
            if not os.path.lexists(rootfs / ROOTFS_PYTHON.lstrip("/")):
                return f"Its root filesystem {rootfs} has no session agent at {ROOTFS_PYTHON}; build it from images/{template}."
        if template == "jupyterlab" and rootfs == Path("/"):
            installed = importlib.util.find_spec("jupyterlab") is not None
        else:
            installed = any(os.path.lexists(rootfs / path) for path in IDE_BINARIES.get(template, ()))
        if installed:
            return ""
        return f"Not installed on this compute environment: {IDE_INSTALL_HINTS[template]}."

    def environment_problem(self) -> str:
        return ""

    def start_timeout_hint(self, handle: dict) -> str:
        return "Check that the compute environment has capacity."

    def launch(self, spec: SessionSpec) -> dict:
        session_dir = self.sessions_dir / spec.name
        session_dir.mkdir(parents=True, exist_ok=True)
        log_path = session_dir / "agent.log"
        base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONPATH": str(PROJECT_ROOT),
            **{name: value for name, value in os.environ.items() if name.startswith("AWS_")},
            **spec.environment(),
        }
        with open(log_path, "ab") as log_file:
            if self.isolated:
                handle = self._launch_container(spec, session_dir, base_env, log_file)
            else:
                handle = self._launch_process(session_dir, base_env, log_file)
        return {**handle, "log": str(log_path), "memory_mb": spec.memory_mb}

    def _launch_process(self, session_dir, env, log_file):
        home = session_dir / "home"
        # Every start gets a fresh writable layer: what was there before comes back only from a checkpoint.
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        # The writable layer is the session's home: pip installs into its ~/.local, which the
        # session's Python finds first.
        site_packages = home / ".local/lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        env = {
            **env,
            "PATH": f"{home / '.local/bin'}:{env['PATH']}",
            "PYTHONPATH": f"{site_packages}:{PROJECT_ROOT}",
            "PIP_PREFIX": str(home / ".local"),
            "HOME": str(home),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "studios.agent"],
            cwd=session_dir, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return {"pid": process.pid, "started": _start_time(process.pid), "isolated": False}

    def _launch_container(self, spec, session_dir, env, log_file):
        layout = container.Layout(session_dir)
        container_id = f"{spec.name}-{spec.token[:8].lower()}"
        ports = [free_port("127.0.0.1"), free_port("127.0.0.1")]  # the IDE's (or its gate's) and the agent's control endpoint
        missing = [m.name for m in spec.mounts if not m.uri.startswith("s3://") and not os.path.isdir(m.uri)]
        if missing:
            raise BackendError(f"the folders of datasets {', '.join(missing)} do not exist on this machine")
        try:
            container.prepare_layer(layout, spec.storage_quota_mb or self.layer_quota_mb)
            earlier_steps = self._restore(spec, layout, env, log_file) if spec.restore else []
            rootfs = self.rootfs.get(spec.template, "/")
            container.mount_root(layout, rootfs)
            mounts = [container.bind(layout.upper, container.LAYER_IN_CONTAINER, writable=False)]
            python, agent_env = sys.executable, {}
            if rootfs != "/":
                python, agent_env = ROOTFS_PYTHON, {"PYTHONPATH": ROOTFS_AGENT_HOME}
                for package in ("studios", "checkpoints"):
                    mounts.append(container.bind(PROJECT_ROOT / package, f"{ROOTFS_AGENT_HOME}/{package}", writable=False))
            if not spec.work_dir.startswith("s3://"):
                Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
                mounts.append(container.bind(spec.work_dir, spec.work_dir, writable=True))
            mounts += container.network_mounts(layout)
            for mount in spec.mounts:
                source = mount.uri
                if mount.uri.startswith("s3://"):
                    source = layout.data / mount.name
                    container.mount_s3(mount.uri, source, mount.writable, log_file)
                mounts.append(container.bind(source, f"{container.DATA_IN_CONTAINER}/{mount.name}", mount.writable))
            config = container.oci_config(
                container_id=container_id,
                args=[python, "-m", "studios.agent"],
                env={
                    **env,
                    **agent_env,
                    "HOME": "/root",
                    "STUDIOS_LAYER": container.LAYER_IN_CONTAINER,
                    "STUDIOS_LAYER_EXCLUDE": json.dumps(container.LAYER_EXCLUDED),
                    "STUDIOS_ROOT_DIR": "/workspace",
                    "STUDIOS_DATA_MOUNTED": "1",
                    "STUDIOS_RESTORED": "1",
                    "STUDIOS_EARLIER_STEPS": json.dumps(earlier_steps),
                    # Its own network: listen on it, at the ports the host's loopback forwards, and report to
                    # the platform through the socket that leads there.
                    "STUDIOS_BIND_HOST": "0.0.0.0",
                    "STUDIOS_ADVERTISE_HOST": "127.0.0.1",
                    "STUDIOS_PORT": str(ports[0]),
                    "STUDIOS_CONTROL_PORT": str(ports[1]),
                    "STUDIOS_PLATFORM_SOCKET": container.PLATFORM_SOCKET_IN_CONTAINER,
                },
                cwd="/workspace",
                cpus=spec.cpus,
                memory_mb=spec.memory_mb,
                mounts=mounts,
                hidden=self.hidden,
            )
            pid, helpers = container.start(layout, config, container_id, ports, _socat_address(spec.callback_url), log_file)
        except BaseException as error:
            # Whatever went wrong (a failed restore included), leave no container, mount or image behind.
            container.delete(container_id)
            container.remove(layout)
            if not isinstance(error, (OSError, subprocess.CalledProcessError)):
                raise
            detail = getattr(error, "stderr", b"") or b""
            raise BackendError(f"the container could not start: {error} {detail.decode(errors='replace')}".strip()) from None
        helpers = [[helper, _start_time(helper)] for helper in helpers]
        return {"pid": pid, "started": _start_time(pid), "isolated": True, "container": container_id, "helpers": helpers}

    def _restore(self, spec, layout, env, log_file):
        """Restore the checkpoint into the empty layer on the host, before it is mounted under the root."""
        restore = subprocess.run(
            [sys.executable, "-m", "studios.agent", "restore"],
            env={**env, "HOME": str(layout.session_dir), "STUDIOS_LAYER": str(layout.upper)},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file, text=True,
        )  # fmt: skip
        output = restore.stdout.strip().splitlines()
        if restore.returncode != 0:
            failure = json.loads(output[-1]) if output else {}
            raise SessionFailed(
                failure.get("reason") or f"Checkpoint {spec.restore['name']} could not be restored; its log is "
                f"{log_file.name}. Start the studio again.",
                checkpoint_invalid=bool(failure.get("checkpoint_invalid")),
            )
        return json.loads(output[-1])

    def _alive(self, handle):
        return bool(handle.get("pid")) and _running(handle["pid"], handle.get("started"))

    def poll(self, handle: dict) -> SessionState:
        if handle.get("container") and container.oom_kills(handle["container"]):
            return SessionState(alive=False, reason=f"out of memory (limit {handle['memory_mb']} MB)")
        if self._alive(handle):
            if not all(_running(pid, started) for pid, started in handle.get("helpers", [])):
                # Without slirp4netns or socat the session can neither be reached nor report: end it.
                return SessionState(
                    alive=False,
                    reason="The session's network (slirp4netns or socat on the host) ended unexpectedly; its log is "
                    f"{handle.get('log')}. Start the studio again; its last checkpoint is kept.",
                )
            return SessionState(alive=True)
        return SessionState(
            alive=False,
            reason=f"The session's process ended unexpectedly; its log is {handle.get('log')}. Start the studio again.",
        )

    def storage_usage(self, handle: dict):
        if not handle.get("container"):
            return None
        layer = container.Layout(Path(handle["log"]).parent).layer
        if not os.path.ismount(layer):
            return None
        stats = os.statvfs(layer)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize, stats.f_blocks * stats.f_frsize

    def terminate(self, handle: dict, timeout: float) -> None:
        """SIGTERM (the agent saves a final checkpoint), SIGKILL after ``timeout``, then drop the layer."""
        if self._alive(handle):
            pid = handle["pid"]
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(handle) and time.monotonic() < deadline:
                time.sleep(0.1)
            if handle.get("container"):
                container.signal_container(handle["container"], "KILL")
            else:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _reap(pid)
        if not handle.get("log"):
            return
        session_dir = Path(handle["log"]).parent
        if handle.get("container"):
            container.delete(handle["container"])
            for pid, started in handle.get("helpers", []):
                if _running(pid, started):
                    os.kill(pid, signal.SIGTERM)
                    _reap(pid)
            container.remove(container.Layout(session_dir))
        else:
            shutil.rmtree(session_dir / "home", ignore_errors=True)
