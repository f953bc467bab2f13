"""Isolated local sessions: the session agent as the first process of a container under a real
OCI runtime (runc or crun, from Debian's packages).

The container's root is an overlay: the template's root filesystem below (the host's ``/`` by
default), the session's writable layer above. The layer is its own ext4 filesystem in a
sparse file of the quota's size, loop-mounted, so a session that fills it gets ENOSPC while the
platform and other sessions carry on; every start gets a fresh one. CPU and memory limits are
the runtime's cgroup settings; datasets are bind mounts at /workspace/data/<name>, read-only
unless writable. The container shares the host's network, so the agent and the IDE listen on
loopback where the proxy reaches them; the platform's data dir is hidden under an empty tmpfs.
With the host's root as the lower layer, a session can read the rest of the host's files (its
writes never reach them): configure a template root filesystem where that matters.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

RUNTIMES = ("runc", "crun")
LAYER_IN_CONTAINER = "/.studios/layer"
DATA_IN_CONTAINER = "/workspace/data"
# Where a container's mount points and scratch space appear in its writable layer: never saved.
LAYER_EXCLUDED = ["workspace/data", ".studios"]
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip


def runtime():
    return next((path for name in RUNTIMES if (path := shutil.which(name))), None)


def isolation_problem():
    """Why this host cannot isolate sessions, or "" when it can."""
    if not sys.platform.startswith("linux"):
        return "the host is not Linux"
    if os.geteuid() != 0:
        return "the platform does not run as root"
    if runtime() is None:
        return "no OCI runtime is installed (apt-get install runc)"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is missing (apt-get install e2fsprogs)"
    if not Path("/sys/fs/cgroup/memory").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "no memory cgroup controller is mounted"
    return ""


def _run(*command):
    subprocess.run(command, check=True, capture_output=True)


class Layout:
    """Where one session's pieces live on the host."""

    def __init__(self, session_dir):
        self.session_dir = Path(session_dir)
        self.image = self.session_dir / "layer.img"
        self.layer = self.session_dir / "layer"
        self.upper = self.layer / "upper"
        self.work = self.layer / "work"
        self.rootfs = self.session_dir / "rootfs"
        self.data = self.session_dir / "data"  # S3 datasets, mounted on the host with rclone


def prepare_layer(layout, quota_mb):
    """A fresh, empty writable layer of ``quota_mb`` on its own filesystem."""
    remove(layout)
    layout.session_dir.mkdir(parents=True, exist_ok=True)
    with open(layout.image, "wb") as image:
        image.truncate(quota_mb * 2**20)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(layout.image))
    layout.layer.mkdir()
    _run("mount", "-o", "loop", str(layout.image), str(layout.layer))
    layout.upper.mkdir()
    layout.work.mkdir()


def mount_root(layout, lower):
    layout.rootfs.mkdir(exist_ok=True)
    options = f"lowerdir={lower},upperdir={layout.upper},workdir={layout.work}"
    _run("mount", "-t", "overlay", "overlay", "-o", options, str(layout.rootfs))


def remove(layout):
    """Unmount and delete whatever a session left; safe to call at any point."""
    unmount_all_under(layout.session_dir)
    for path in (layout.rootfs, layout.layer):
        if path.exists() and not os.path.ismount(path):
            shutil.rmtree(path, ignore_errors=True)
    # Only empty mount points: a data mount that failed to unmount must never be emptied.
    for mount_point in layout.data.glob("*"):
        with contextlib.suppress(OSError):
            mount_point.rmdir()
    with contextlib.suppress(OSError):
        layout.data.rmdir()
    layout.image.unlink(missing_ok=True)


def mount_s3(uri, mount_point, writable, log_file):
    """Mount ``s3://bucket/prefix`` at ``mount_point`` on the host with rclone (FUSE), as the platform's
    AWS identity (the usual AWS_* variables, AWS_ENDPOINT_URL for an S3-compatible store)."""
    Path(mount_point).mkdir(parents=True, exist_ok=True)
    # rclone's S3 client cannot take AWS_CA_BUNDLE; it trusts the system's CAs (SSL_CERT_FILE) instead.
    env = {
        **{name: value for name, value in os.environ.items() if name != "AWS_CA_BUNDLE"},
        "RCLONE_S3_PROVIDER": "AWS" if not os.environ.get("AWS_ENDPOINT_URL") else "Other",
        "RCLONE_S3_ENV_AUTH": "true",
        "RCLONE_S3_ENDPOINT": os.environ.get("AWS_ENDPOINT_URL", ""),
        "RCLONE_S3_REGION": os.environ.get("AWS_DEFAULT_REGION", ""),
    }
    command = ["rclone", "mount", f":s3:{uri.removeprefix('s3://')}", str(mount_point), "--daemon", "--dir-cache-time", "10s"]
    command += ["--vfs-cache-mode", "writes"] if writable else ["--read-only"]
    subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, check=True)


def unmount_all_under(directory):
    """Lazily unmount every mount below ``directory`` (FUSE data mounts), deepest first."""
    prefix = str(Path(directory).resolve()) + "/"
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount_point in sorted((m for m in mounted if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)


def bind(source, destination, writable):
    return {"destination": destination, "type": "bind", "source": str(source), "options": ["rbind", "rw" if writable else "ro"]}


def oci_config(*, container_id, args, env, cwd, cpus, memory_mb, mounts, hidden):
    """The OCI runtime configuration (config.json) of one session."""
    memory = memory_mb * 2**20
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": [f"{name}={value}" for name, value in env.items()],
            "cwd": cwd,
            "capabilities": {kind: CAPABILITIES for kind in ("bounding", "effective", "permitted")},
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": container_id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            # The host's runtime sockets (databases, daemons) stay out of reach.
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
            *({"destination": str(path), "type": "tmpfs", "source": "tmpfs", "options": ["mode=700", "size=64k"]} for path in hidden),
            *mounts,
        ],  # fmt: skip
        "linux": {
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")],
            "cgroupsPath": f"/studios/{container_id}",
            "resources": {
                "memory": {"limit": memory, "swap": memory},
                "cpu": {"quota": cpus * 100_000, "period": 100_000},
                "pids": {"limit": 8192},
            },
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def start(layout, config, container_id, log_file):
    """Run the container detached; return the host pid of its first process."""
    (layout.session_dir / "config.json").write_text(json.dumps(config, indent=1))
    subprocess.run(
        [runtime(), "run", "--detach", "--bundle", str(layout.session_dir), container_id],
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, check=True,
    )  # fmt: skip
    state = subprocess.run([runtime(), "state", container_id], capture_output=True, text=True, check=True)
    return json.loads(state.stdout)["pid"]


def signal_container(container_id, signal_name):
    subprocess.run([runtime(), "kill", "--all", container_id, signal_name], capture_output=True, check=False)


def delete(container_id):
    subprocess.run([runtime(), "delete", "--force", container_id], capture_output=True, check=False)


def oom_kills(container_id):
    """How many processes the kernel killed for exceeding the container's memory limit."""
    for path in (
        Path(f"/sys/fs/cgroup/memory/studios/{container_id}/memory.oom_control"),  # cgroup v1
        Path(f"/sys/fs/cgroup/studios/{container_id}/memory.events"),  # cgroup v2
    ):
        try:
            for line in path.read_text().splitlines():
                name, _, count = line.partition(" ")
                if name == "oom_kill":
                    return int(count)
        except OSError:
            continue
    return 0
