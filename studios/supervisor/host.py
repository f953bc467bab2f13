"""A session's host: runs the session's job container on this machine as an AWS Batch instance runs the job (ECS
starting the image's entrypoint with the job's command and environment in a privileged container).

The local backend starts one per session, ``python -m studios.supervisor.host`` in the session's folder, with the
job (``STUDIOS_HOST_JOB``: the command and environment that the AWS Batch backend would submit, built by the same
function), the image and where this host unpacks images (``STUDIOS_HOST_IMAGE``, ``STUDIOS_HOST_IMAGE_CACHE``), and
the host folders the job needs (``STUDIOS_HOST_BINDS``: a checkpoint store or datasets that are folders here, where
a Batch instance has S3). It pulls the image (once per digest on this host, ``images.py``), reporting that step
with the job's token as Batch shows its STARTING state, then runs the job container in the foreground under runc,
with the session's folder as its bundle; SIGTERM goes on to the container's first process (the image's ``tini``,
which passes it to the supervisor), as ``docker stop`` does; when the container has ended it is deleted.

What the job container gets, and why (what Batch's ``privileged: true`` gives a job on EC2, no more):

- every capability, no seccomp filter, every device allowed by its device cgroup, the host's ``/dev``: the
  supervisor loop-mounts the session's layer (``/dev/loop-control``, and the loop devices it makes appear in the
  host's ``/dev``), mounts overlays and FUSE (``/dev/fuse``, for rclone) and runs runc, whose slirp4netns opens
  ``/dev/net/tun``;
- the host's ``/sys`` with its cgroup hierarchies, writable: runc gives the sandbox cgroups of its own
  (``/studios/<id>``), where the kernel counts out-of-memory kills;
- the host's network, as Batch runs EC2 jobs: the gate and the control endpoint listen on the ports the platform
  chose, and the supervisor reaches the platform and the store as the host does;
- PID, mount, IPC and UTS namespaces of its own: whatever ends the container ends everything in it, the sandbox
  (nested in its PID namespace) included;
- a writable root, an overlay of the image's unpacked root filesystem (shared, read-only) and a folder of the
  session's, as Docker gives a container; ``/run`` a tmpfs of its own (runc's state); the host's resolver files.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from . import images, sandbox
from .protocol import PULLING, Job, SessionConfig, environ_with_file
from .supervisor import Reporter, SessionEnded

log = logging.getLogger("studios.supervisor.host")

# Linux's capabilities by number: a privileged container gets every one its engine has.
ALL_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]  # fmt: skip
RESOLVER_FILES = ("/etc/resolv.conf", "/etc/hosts")
# Where the job container sees the host's folders: in its own /run, a tmpfs, which the sandbox's root (an overlay
# on the job container's root filesystem) does not include, so that no host path shows there, not even as a name.
HOST_FOLDERS = "/run/studios"


@dataclass(frozen=True)
class Bind:
    """A host folder (or file) the job container sees at ``destination``, under ``HOST_FOLDERS``: read-only unless
    ``writable``."""

    source: str
    destination: str
    writable: bool


def _capabilities() -> list[str]:
    """The capabilities this host process may pass on (its bounding set): all of them, where it is not itself in a
    container that took some away."""
    status = Path("/proc/self/status").read_text()
    bounding = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapBnd:")), 16)
    return [name for number, name in enumerate(ALL_CAPABILITIES) if bounding & (1 << number)]


def job_container_config(
    container_id: str, job: Job, runtime: images.Runtime, environment: dict[str, str], binds: list[Bind]
) -> dict[str, Any]:
    """The OCI configuration of a job container: privileged, on the host's network (see the module's docstring)."""
    capabilities = _capabilities()
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [*runtime.entrypoint, *(job.command or runtime.command)],
            "env": [f"{name}={value}" for name, value in {**runtime.environment, **environment}.items()],
            "cwd": runtime.working_dir,
            "capabilities": {kind: capabilities for kind in ("bounding", "effective", "permitted", "inheritable")},
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": container_id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind", "rw"]},
            {"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "rw"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
            *(
                {"destination": path, "type": "bind", "source": path, "options": ["bind", "ro"]}
                for path in RESOLVER_FILES
                if os.path.exists(path)
            ),
            *(
                {
                    "destination": bind.destination,
                    "type": "bind",
                    "source": bind.source,
                    "options": ["rbind", "rw" if bind.writable else "ro", "nosuid", "nodev"],
                }
                for bind in binds
            ),
        ],
        "linux": {
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")],
            "cgroupsPath": f"/studios/{container_id}-job",
            "resources": {"devices": [{"allow": True, "access": "rwm"}]},
        },
    }


class Host(Reporter):
    def __init__(self, environ: dict[str, str]) -> None:
        self.job = Job(**json.loads(environ["STUDIOS_HOST_JOB"]))
        super().__init__(SessionConfig.from_environ(self.job.environment))
        self.image = environ["STUDIOS_HOST_IMAGE"]
        self.image_cache = environ["STUDIOS_HOST_IMAGE_CACHE"]
        self.binds = [Bind(**bind) for bind in json.loads(environ.get("STUDIOS_HOST_BINDS", "[]"))]
        # This host's AWS identity and endpoints, as an instance gives its jobs its role; a certificate authority
        # bundle it names is bound in where it is.
        self.host_environment = {name: value for name, value in environ.items() if name.startswith("AWS_")}
        if os.path.isfile(environ.get("AWS_CA_BUNDLE", "")):
            self.host_environment["AWS_CA_BUNDLE"] = f"{HOST_FOLDERS}/ca-bundle.crt"
            self.binds.append(Bind(environ["AWS_CA_BUNDLE"], self.host_environment["AWS_CA_BUNDLE"], writable=False))
        self.layout = sandbox.Layout(Path.cwd())
        self.container_id = self.config.container_id
        self.running = False

    def pull(self) -> Path:
        """The image's root filesystem, unpacked on this host."""
        reference = self.image
        self.step(PULLING, "in-progress", reference)
        began = time.monotonic()
        try:
            digest, rootfs, cached = images.pull(
                reference,
                self.image_cache,
                progress=lambda message: self.step(PULLING, "in-progress", f"{reference}: {message}"),
                hold=True,  # as long as this host process runs, and with it the job container
            )
        except images.ImageUnavailable as error:
            raise SessionEnded(
                f"Image {reference} cannot be used: {error}. Check the compute environment's image for this "
                "template, then start the studio again."
            ) from None
        missing = images.missing_for(self.config.template, rootfs)
        if missing:
            raise SessionEnded(
                f"Image {reference} is not a Studios {self.config.template} image: it has no {', '.join(missing)} "
                f"(build it from images/{self.config.template}/Dockerfile)."
            )
        how = "already on this host" if cached else f"pulled in {time.monotonic() - began:.1f} s"
        self.step(PULLING, "succeeded", f"{reference} ({digest[:19]}…), {how}")
        return rootfs

    def run(self) -> int:
        """Run the job container until it ends; its exit code."""
        rootfs = self.pull()
        self.layout.upper.mkdir(parents=True)
        self.layout.work.mkdir()
        sandbox.mount_root(self.layout, str(rootfs))
        # A writable folder (the checkpoint store) is made when missing, as the store would make it; a dataset's
        # missing folder is not bound, and the supervisor says so.
        for bind in self.binds:
            if bind.writable:
                Path(bind.source).mkdir(mode=0o700, parents=True, exist_ok=True)
        config = job_container_config(
            self.container_id,
            self.job,
            images.runtime(rootfs),
            {**self.host_environment, **self.job.environment},
            [bind for bind in self.binds if os.path.exists(bind.source)],
        )
        descriptor = os.open(self.layout.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(config, file, indent=1)
        runtime = sandbox.runtime() or "runc"
        # The job container keeps this process's session keyring: runc, inside it, gives the sandbox a keyring of
        # its own, which it cannot do under one that runc made for a container of the same name.
        container = subprocess.Popen(
            [runtime, "run", "--no-new-keyring", "--bundle", str(self.layout.session_dir), self.container_id],
            stdin=subprocess.DEVNULL,
        )
        self.running = True
        return container.wait()

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.running:
            raise SystemExit(0)  # nothing has started yet: nothing to save
        sandbox.signal_container(self.container_id, "TERM", all_processes=False)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s host %(levelname)s %(message)s")
    host = Host(environ_with_file(os.environ))
    signal.signal(signal.SIGTERM, host.on_sigterm)
    code = 1
    try:
        code = host.run()
    except SessionEnded as error:
        log.error("%s", error)
        host.failed(error)
    finally:
        sandbox.delete(host.container_id)
        sandbox.unmount_all_under(host.layout.session_dir)
    sys.exit(code)


if __name__ == "__main__":
    main()
