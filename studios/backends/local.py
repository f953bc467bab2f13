"""The local backend: sessions on this machine.

Where the host isolates sessions (Linux, root, runc or crun, skopeo and umoci installed; see
``supervisor/sandbox.py``) and the template has an image, a session runs exactly as on an AWS Batch instance: the
session's host (``python -m studios.supervisor.host``, standing in for Batch's agent) pulls the image, unpacks it
once per digest into a cache folder every session of that image shares read-only (``supervisor/images.py``), and
runs the job the AWS Batch backend would submit (``SessionSpec.job``: the image's supervisor, its environment) in a
privileged job container made from that image. The supervisor there runs the IDE in its nested sandbox: its own
mount, PID and network namespaces, an overlay root over the image with a fresh writable layer, cgroup limits,
datasets at /workspace/data. A template given a root filesystem folder (``STUDIOS_TEMPLATE_ROOTFS``), or none, runs
its supervisor as a host process instead, in a mount namespace of its own, sandboxing the IDE on that folder (or the
host's ``/``); where the host cannot isolate, that supervisor runs the IDE as a plain process whose writable layer
is a home folder, and the studio's page says what does not hold.

The host process (or the supervisor) is started in its own session with only its configuration in its environment,
so that it outlives a restart of the worker that launched it and is found again by pid. Everything the session will
create on the host is named in the handle (``plan``) before it is created.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypedDict

from ..supervisor import host, sandbox
from ..supervisor import images as template_images
from ..supervisor.protocol import SessionConfig
from ..supervisor.supervisor import free_port
from .base import BackendError, ComputeBackend, SessionSpec, SessionState

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# How to get each template's IDE into the session's root filesystem when it has none.
IDE_INSTALL_HINTS = {
    "jupyterlab": "install JupyterLab into the platform's Python (pip install jupyterlab)",
    "vscode": "install code-server on this machine (images/vscode/install-code-server.sh, from the npm "
    "registry), or set a root filesystem that has it for the template (STUDIOS_TEMPLATE_ROOTFS)",
    "rstudio": "RStudio Server is not in Debian's archive; export the RStudio image (images/rstudio) into a "
    "folder and set it as the template's root filesystem (STUDIOS_TEMPLATE_ROOTFS)",
}
# Why an image the registry does not have may be missing: `make images` cannot build every template here.
IMAGE_HINTS = {
    "rstudio": "RStudio Server's release package cannot be fetched from this network, so `make images` does not "
    "build its image; push one built elsewhere (images/rstudio) and name it in the compute environment",
}


def image_problem(template: str, reference: str) -> str:
    """Why ``template``'s image ``reference`` cannot be pulled (the registry is asked), or "" when it can."""
    try:
        template_images.resolve(reference, timeout=10)
    except template_images.ImageUnavailable as error:
        hint = IMAGE_HINTS.get(template, "build and push it with `make images`")
        return f"Its image {reference} cannot be used: {error}. {hint[0].upper()}{hint[1:]}."
    return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, to tell it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _running(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` is still the one that started at ``started`` (reaping it if it is our dead child)."""
    _reap(pid)
    current = _start_time(pid)
    return current is not None and current == started


class HostLeftovers(TypedDict):
    """What ``inventory`` found, for ``sweep``."""

    containers: dict[str, str]  # container id -> session folder (its bundle)
    supervisors: dict[int, str]  # pid -> session folder (its working directory)
    folders: list[str]


class LocalBackend(ComputeBackend):
    def __init__(
        self,
        sessions_dir: str | Path,
        isolation: str = "auto",
        hidden: Iterable[str | Path] = (),
        rootfs: dict[str, str] | None = None,
        images: dict[str, str] | None = None,
        image_cache: str | Path | None = None,
    ) -> None:
        """``isolation``: "auto" (containers when the host allows) or "off"; ``hidden``: host paths sessions never
        see; ``images``: the image (registry reference) each template's containers run, unpacked under
        ``image_cache``; ``rootfs``: a root filesystem folder for a template without one (the host's ``/`` for
        the others, and for every template's plain processes where the host cannot isolate)."""
        self.sessions_dir = Path(sessions_dir)
        self.rootfs = rootfs or {}
        self.images = images or {}
        self.image_cache = Path(image_cache) if image_cache else self.sessions_dir.parent / "images"
        self.isolation_problem = sandbox.isolation_problem() if isolation == "auto" else "isolation is turned off"
        if not self.isolation_problem and self.images:
            self.isolation_problem = template_images.tools_problem()
        self.hidden = [str(path) for path in hidden]

    @property
    def isolated(self) -> bool:
        return not self.isolation_problem

    def image(self, template: str) -> str:
        """The image ``template``'s sessions run from, or "" when they run from a folder: a root filesystem folder
        configured for the template (STUDIOS_TEMPLATE_ROOTFS), or the host's where it names no image or the host
        cannot isolate (plain processes)."""
        return self.images.get(template, "") if self.isolated and template not in self.rootfs else ""

    def template_problem(self, template: str) -> str:
        """Asks the registry, for an image: the environment check calls it, never a page."""
        if reference := self.image(template):
            return image_problem(template, reference)
        rootfs = Path(self.rootfs.get(template, "/"))
        if rootfs != Path("/") and not self.isolated:
            return f"Its root filesystem {rootfs} needs isolated sessions, which this host cannot run: {self.isolation_problem}."
        if rootfs != Path("/"):
            installed = not template_images.missing_for(template, rootfs)
        elif template == "jupyterlab":  # the platform's own
            installed = importlib.util.find_spec("jupyterlab") is not None
        else:
            installed = any(os.path.lexists(path) for path in template_images.IDE_BINARIES.get(template, ()))
        if installed:
            return ""
        return f"Not installed on this compute environment: {IDE_INSTALL_HINTS[template]}."

    def environment_problem(self) -> str:
        return ""

    def start_timeout_hint(self, handle: dict[str, Any]) -> str:
        return "Check that the compute environment has capacity."

    def plan(self, spec: SessionSpec) -> dict[str, Any]:
        """Names and ports only: nothing exists on the host yet."""
        port, control_port = free_port(), free_port()
        return {
            "session_dir": str(self.sessions_dir / spec.name),
            "container": f"{spec.name}-{spec.token[:8].lower()}" if self.isolated else "",
            "endpoint": f"http://127.0.0.1:{port}",
            "control": f"http://127.0.0.1:{control_port}",
            "memory_mb": spec.memory_mb,
            "image": self.image(spec.template),
        }

    def config(self, spec: SessionSpec, handle: dict[str, Any]) -> SessionConfig:
        """The configuration of a supervisor run as a host process (a template without an image)."""
        work_dir_hidden = [] if spec.work_dir.startswith("s3://") else [spec.work_dir]
        return spec.config(
            session_dir=handle["session_dir"],
            port=_port(handle["endpoint"]),
            control_port=_port(handle["control"]),
            isolation="container" if handle["container"] else "process",
            rootfs=self.rootfs.get(spec.template, "/"),
            container_id=handle["container"],
            # The platform's data and the checkpoint store stay out of sight even where the root filesystem
            # is the host's.
            hidden=tuple(self.hidden + work_dir_hidden),
        )

    def host_environment(self, spec: SessionSpec, handle: dict[str, Any]) -> dict[str, str]:
        return host_environment(
            spec,
            container_id=handle["container"],
            port=_port(handle["endpoint"]),
            control_port=_port(handle["control"]),
            bind_host="127.0.0.1",
            image=handle["image"],
            image_cache=str(self.image_cache),
        )

    def launch(self, spec: SessionSpec, handle: dict[str, Any]) -> dict[str, Any]:
        session_dir = Path(handle["session_dir"])
        self.remove_session_dir(session_dir)
        session_dir.mkdir(mode=0o700, parents=True)
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONPATH": str(PROJECT_ROOT),
            **{name: value for name, value in os.environ.items() if name.startswith("AWS_")},
        }
        if handle.get("image"):
            environ.update(self.host_environment(spec, handle))
            command = [sys.executable, "-m", "studios.supervisor.host"]
        else:
            environ.update(self.config(spec, handle).to_environ())
            command = [sys.executable, "-m", "studios.supervisor"]
        if handle["container"]:
            # A mount namespace of its own: the layer, the roots and the data mounts never show on the host.
            command = ["unshare", "--mount", "--propagation", "private", "--", *command]
        descriptor = os.open(session_dir / "session.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "ab") as log_file:
            process = subprocess.Popen(
                command,
                cwd=session_dir,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return {**handle, "pid": process.pid, "started": _start_time(process.pid)}

    def _supervisor(self, handle: dict[str, Any]) -> int | None:
        """The pid of the session's supervisor, or None once it has ended. One launched by a worker that died before
        recording its pid is found by its session folder (its working directory)."""
        pid: int | None = handle.get("pid")
        if pid and _running(pid, handle.get("started")):
            return pid
        return next((pid for pid, folder in _supervisors() if folder == handle.get("session_dir")), None)

    def poll(self, handle: dict[str, Any]) -> SessionState:
        if self._supervisor(handle):
            return SessionState(alive=True)
        return SessionState(
            alive=False,
            reason="The session's supervisor ended unexpectedly. Start the studio again; its last checkpoint is kept.",
        )

    def stop(self, handle: dict[str, Any]) -> None:
        if pid := self._supervisor(handle):
            os.kill(pid, signal.SIGTERM)

    def terminate(self, handle: dict[str, Any], timeout: float) -> None:
        """SIGTERM (the supervisor saves a final checkpoint and takes the session down), SIGKILL after
        ``timeout``; then remove whatever is left, whatever state the session was in, and check that nothing is."""
        self.stop(handle)
        deadline = time.monotonic() + timeout
        while self._supervisor(handle) and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while (pid := self._supervisor(handle)) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
            time.sleep(0.01)
        if handle.get("container"):
            sandbox.delete(handle["container"])
        if handle.get("session_dir"):
            self.remove_session_dir(Path(handle["session_dir"]))
        left = self.leftovers(handle)
        if left:
            raise BackendError(f"what is left of the session could not be removed: {', '.join(left)}")

    def leftovers(self, handle: dict[str, Any]) -> list[str]:
        """What is still on this host of the session: nothing, once it is terminated."""
        left = []
        if any(folder == handle.get("session_dir") for _, folder in _supervisors()):
            left.append("its supervisor")
        if handle.get("container") and sandbox.exists(handle["container"]):
            left.append("its container")
        if handle.get("session_dir") and os.path.exists(handle["session_dir"]):
            left.append("its folder")
        return left

    def inventory(self) -> HostLeftovers:
        """Everything of this platform's sessions on this host, each thing with its session folder."""
        prefix = str(self.sessions_dir) + "/"
        return {
            "containers": {cid: bundle for cid, bundle in sandbox.containers() if bundle.startswith(prefix)},
            "supervisors": {pid: folder for pid, folder in _supervisors() if folder.startswith(prefix)},
            "folders": [str(path) for path in self.sessions_dir.glob("*")],
        }

    def sweep(self, found: HostLeftovers, owned_handles: Iterable[dict[str, Any]]) -> list[str]:
        """Remove what ``found`` (``inventory``) lists that none of ``owned_handles`` names, and the unpacked
        images no session runs from that a later pull superseded; what it removed."""
        owned = {handle.get("session_dir") for handle in owned_handles}
        removed = []
        for pid, folder in found["supervisors"].items():
            if folder not in owned:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                _reap(pid)
                removed.append(f"supervisor {pid} of {Path(folder).name}")
        for container_id, folder in found["containers"].items():
            if folder not in owned:
                sandbox.delete(container_id)
                removed.append(f"container {container_id}")
        for folder in found["folders"]:
            if folder not in owned:
                self.remove_session_dir(Path(folder))
                removed.append(f"session folder {Path(folder).name}")
        removed += [f"unpacked image {digest}" for digest in template_images.collect(self.image_cache)]
        return removed

    def remove_session_dir(self, session_dir: Path) -> None:
        # The session's mounts live in its supervisor's namespace; any seen here are unmounted first.
        sandbox.unmount_all_under(session_dir)
        shutil.rmtree(session_dir, ignore_errors=True)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _supervisors() -> list[tuple[int, str]]:
    """(pid, session folder) of every session supervisor, or session's host, running on this host; a supervisor in
    a job container has the image's working directory, none of this host's session folders."""
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if b"studios.supervisor" in (process / "cmdline").read_bytes():
                found.append((int(process.name), os.readlink(process / "cwd")))
    return found


def host_environment(
    spec: SessionSpec, *, container_id: str, port: int, control_port: int, bind_host: str, image: str, image_cache: str
) -> dict[str, str]:
    """What a session's host (``supervisor/host.py``, here or on a Slurm node) is told: the job the AWS Batch backend
    would submit, its image, where the host unpacks images, and the host folders it needs where a Batch instance has
    S3 (a folder checkpoint store, datasets): the job sees them under ``host.HOST_FOLDERS``, so its environment
    names them there."""
    binds, mounts, work_dir = [], [], spec.work_dir
    for mount in spec.mounts:
        if "://" not in mount.uri:
            binds.append(host.Bind(mount.uri, f"{host.HOST_FOLDERS}/data/{mount.name}", mount.writable))
            mount = replace(mount, uri=binds[-1].destination)
        mounts.append(mount)
    if "://" not in work_dir:
        binds.append(host.Bind(work_dir, f"{host.HOST_FOLDERS}/store", writable=True))
        work_dir = binds[-1].destination
    job = replace(spec, work_dir=work_dir, mounts=mounts).job(
        container_id=container_id, port=port, control_port=control_port, bind_host=bind_host
    )
    return {
        "STUDIOS_HOST_JOB": json.dumps(asdict(job)),
        "STUDIOS_HOST_IMAGE": image,
        "STUDIOS_HOST_IMAGE_CACHE": image_cache,
        "STUDIOS_HOST_BINDS": json.dumps([asdict(bind) for bind in binds]),
    }
