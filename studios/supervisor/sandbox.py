"""The sandbox a session's IDE runs in: a container under a real OCI runtime (runc or crun, from Debian's
packages), prepared and watched by the supervisor from outside it.

The container's root is an overlay: the template's root filesystem below, the session's writable layer
above. The layer is its own ext4 filesystem in a sparse file of the quota's size, loop-mounted ``nosuid``
and ``nodev``, so a session that fills it gets ENOSPC while the platform and other sessions carry on;
every start gets a fresh one. The supervisor runs in a mount namespace of its own (``unshare --mount``),
so these mounts never appear on the host and go away with the last process that holds them. CPU and
memory limits are the runtime's cgroup settings; a seccomp filter refuses the system calls a session
never needs, new namespaces included; datasets are bind mounts at /workspace/data/<name>, read-only
unless writable. The container has its own network namespace, connected by slirp4netns: it reaches the
outside world, but not the host's loopback, where the platform's database, broker and other sessions
listen. Nothing of the platform is mounted in: no token, no checkpoint store, no socket to report on.
"""

import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

RUNTIMES = ("runc", "crun")
# slirp4netns's built-in DNS forwarder, reachable from the container whatever the host's resolver is.
SLIRP_DNS = "10.0.2.3"
LINK_LOCAL = "169.254.0.0/16"  # instance metadata (169.254.169.254), container credentials (169.254.170.2)
DATA_IN_CONTAINER = "/workspace/data"
# Where a container's mount points appear in its writable layer: never saved.
LAYER_EXCLUDED = ["workspace/data"]
# System calls a session never needs that reach kernel state no namespace isolates (keyrings, modules, BPF,
# the clock, swap) or open new namespaces, the way to privileges a container does not have: refused with
# EPERM, as container engines' default profiles refuse them.
DENIED_SYSCALLS = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "init_module",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "umount2",
    "unshare",
    "userfaultfd",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
]
# clone's flags that make new namespaces. clone3 passes its flags in memory a filter cannot read: it is
# refused with ENOSYS, so that libc falls back to clone, whose flags argument the filter sees.
NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
EPERM, ENOSYS = 1, 38
SECCOMP_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def runtime() -> str | None:
    return next((path for name in RUNTIMES if (path := shutil.which(name))), None)


def _runtime() -> str:
    """The runtime, for commands that only run once ``isolation_problem()`` found one."""
    path = runtime()
    if path is None:
        raise FileNotFoundError("no OCI runtime is installed (apt-get install runc)")
    return path


def isolation_problem() -> str:
    """Why this host cannot isolate sessions, or "" when it can."""
    if not sys.platform.startswith("linux"):
        return "the host is not Linux"
    if os.geteuid() != 0:
        return "the platform does not run as root"
    if runtime() is None:
        return "no OCI runtime is installed (apt-get install runc)"
    missing = [tool for tool in ("mkfs.ext4", "slirp4netns", "unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install e2fsprogs slirp4netns util-linux iproute2)"
    if not Path("/sys/fs/cgroup/memory").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "no memory cgroup controller is mounted"
    return ""


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def become_subreaper() -> None:
    """Orphans below this process (the container, once runc has exited) become its children, so that it can
    wait for them and see how they ended."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent() -> None:
    """For ``preexec_fn``: the helper ends when the supervisor does, however it ends."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def enter_network(namespace_fd: int) -> None:
    """Move the calling thread into the network namespace open at ``namespace_fd``: sockets it opens from
    then on connect inside the session's network, where the IDE listens on its loopback."""
    if _libc.setns(namespace_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


class Layout:
    """Where one session's pieces live, under its session folder."""

    def __init__(self, session_dir: str | Path) -> None:
        self.session_dir = Path(session_dir)
        self.image = self.session_dir / "layer.img"
        self.layer = self.session_dir / "layer"
        self.upper = self.layer / "upper"
        self.work = self.layer / "work"
        self.rootfs = self.session_dir / "rootfs"
        self.data = self.session_dir / "data"  # S3 datasets, mounted with rclone
        self.resolv_conf = self.session_dir / "resolv.conf"
        self.config = self.session_dir / "config.json"


def prepare_layer(layout: Layout, quota_mb: int) -> None:
    """A fresh, empty writable layer of ``quota_mb`` on its own filesystem, where setuid bits and device
    files mean nothing to the host."""
    with open(layout.image, "wb") as image:
        image.truncate(quota_mb * 2**20)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(layout.image))
    layout.layer.mkdir()
    _run("mount", "-o", "loop,nosuid,nodev", str(layout.image), str(layout.layer))
    layout.upper.mkdir()
    layout.work.mkdir()


def mount_root(layout: Layout, lower: str) -> None:
    layout.rootfs.mkdir()
    # nodev: device files a session makes in its layer open nothing of the host's. Setuid still works inside,
    # for the session's own users (RStudio Server's has sudo); no one outside its mount namespace sees this root.
    options = f"nodev,lowerdir={lower},upperdir={layout.upper},workdir={layout.work}"
    _run("mount", "-t", "overlay", "overlay", "-o", options, str(layout.rootfs))


def s3_problem(uri: str) -> str:
    """Why ``s3://bucket/prefix`` cannot be listed as this host's AWS identity, or "" when it can (an empty or new
    prefix can)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    try:
        boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return f"its bucket {bucket} does not exist; check the dataset's URI"
        return (
            f"S3 refused to list {uri} ({code or error}); the compute environment's hosts need s3:ListBucket and "
            "s3:GetObject on it (on AWS Batch, its instances' role)"
        )
    except BotoCoreError as error:
        return f"S3 cannot be reached from the compute environment's hosts ({error})"
    return ""


def mount_s3(uri: str, mount_point: str | Path, writable: bool, log_file: TextIO) -> subprocess.Popen[bytes]:
    """Mount ``s3://bucket/prefix`` at ``mount_point`` with rclone (FUSE), as the host's AWS identity (the usual
    AWS_* variables, AWS_ENDPOINT_URL for an S3-compatible store). rclone runs as a child that ends with the
    supervisor; returns it once the mount is there. rclone mounts a bucket it cannot read all the same, showing it
    empty: whether it can be read is asked of S3 first, so that the session fails saying why instead."""
    problem = s3_problem(uri)
    if problem:
        raise OSError(problem)
    Path(mount_point).mkdir(parents=True)
    # rclone's S3 client cannot take AWS_CA_BUNDLE; it trusts the system's CAs (SSL_CERT_FILE) instead.
    env = {
        **{
            name: value
            for name, value in os.environ.items()
            if name != "AWS_CA_BUNDLE" and not name.startswith("STUDIOS_")
        },
        "RCLONE_S3_PROVIDER": "AWS" if not os.environ.get("AWS_ENDPOINT_URL") else "Other",
        "RCLONE_S3_ENV_AUTH": "true",
        "RCLONE_S3_ENDPOINT": os.environ.get("AWS_ENDPOINT_URL", ""),
        "RCLONE_S3_REGION": os.environ.get("AWS_DEFAULT_REGION", ""),
    }
    command = ["rclone", "mount", f":s3:{uri.removeprefix('s3://')}", str(mount_point), "--dir-cache-time", "10s"]
    command += ["--vfs-cache-mode", "writes"] if writable else ["--read-only"]
    rclone = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, preexec_fn=die_with_parent
    )
    deadline = time.monotonic() + 30
    while not os.path.ismount(mount_point):
        if rclone.poll() is not None or time.monotonic() > deadline:
            rclone.kill()
            raise OSError(f"rclone could not mount {uri}: check that it exists and that this host may read it")
        time.sleep(0.05)
    return rclone


def bind(source: str | Path, destination: str, writable: bool) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "bind",
        "source": str(source),
        "options": ["rbind", "rw" if writable else "ro", "nosuid", "nodev"],
    }


def seccomp_rules() -> list[dict[str, Any]]:
    """Refuse what a session never needs, new namespaces above all (see NAMESPACE_FLAGS)."""
    rules: list[dict[str, Any]] = [
        {"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    for flag in NAMESPACE_FLAGS.values():
        rules.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return rules


def oci_config(
    *,
    container_id: str,
    args: list[str],
    env: dict[str, str],
    cwd: str,
    cpus: int,
    memory_mb: int,
    mounts: list[dict[str, Any]],
    hidden: Iterable[str],
    user: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The OCI runtime configuration (config.json) of one session."""
    memory = memory_mb * 2**20
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user[0], "gid": user[1]},
            "args": args,
            "env": [f"{name}={value}" for name, value in env.items()],
            "cwd": cwd,
            "capabilities": {kind: CAPABILITIES for kind in ("bounding", "effective", "permitted")},
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": container_id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
            # The host's runtime sockets (databases, daemons) stay out of reach.
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
            # What the root filesystem has but the session must not see: an empty, read-only folder instead.
            *(
                {
                    "destination": str(path),
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["ro", "nosuid", "nodev", "noexec", "mode=000", "size=4k"],
                }
                for path in hidden
            ),
            *mounts,
        ],
        "linux": {
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/studios/{container_id}",
            "resources": {
                "memory": {"limit": memory, "swap": memory},
                "cpu": {"quota": cpus * 100_000, "period": 100_000},
                "pids": {"limit": 8192},
            },
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                # The host's other ABIs too: a denied call must not pass under its 32-bit number.
                "architectures": SECCOMP_ARCHITECTURES.get(platform.machine(), []),
                "syscalls": seccomp_rules(),
            },
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def resolver_mount(layout: Layout) -> dict[str, Any]:
    """slirp4netns's DNS forwarder as the container's resolver."""
    layout.resolv_conf.write_text(f"nameserver {SLIRP_DNS}\n")
    return bind(layout.resolv_conf, "/etc/resolv.conf", writable=False)


def create(layout: Layout, config: dict[str, Any], container_id: str, log_file: TextIO) -> int:
    """Create the container (not started yet); returns the host pid of its first process."""
    descriptor = os.open(layout.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(config, file, indent=1)
    subprocess.run(
        [_runtime(), "create", "--bundle", str(layout.session_dir), container_id],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        check=True,
    )
    state = subprocess.run([_runtime(), "state", container_id], capture_output=True, text=True, check=True)
    pid: int = json.loads(state.stdout)["pid"]
    return pid


def start(container_id: str, log_file: TextIO) -> None:
    subprocess.run(
        [_runtime(), "start", container_id], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, check=True
    )


@dataclass(frozen=True)
class Network:
    """A session's way out: the slirp4netns process, and the write end of its exit pipe, kept open for the
    session's life (closing it ends slirp4netns)."""

    process: subprocess.Popen[bytes]
    exit_pipe: int


def connect_network(pid: int, log_file: TextIO) -> Network:
    """Give the network namespace of process ``pid`` a way out with slirp4netns (without the host's loopback).
    slirp4netns ends with the supervisor (its exit pipe closes)."""
    ready, ready_to_write = os.pipe()
    exit_read, exit_write = os.pipe()
    os.set_inheritable(exit_write, False)
    slirp = subprocess.Popen(
        [
            "slirp4netns",
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            f"--ready-fd={ready_to_write}",
            f"--exit-fd={exit_read}",
            str(pid),
            "tap0",
        ],
        pass_fds=(ready_to_write, exit_read),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        preexec_fn=die_with_parent,
    )
    os.close(ready_to_write)
    os.close(exit_read)
    with os.fdopen(ready, "rb") as signal_file:
        if signal_file.read(1) != b"1":
            slirp.kill()
            raise OSError("slirp4netns could not connect the session's network")
    # slirp4netns connects from the host's own network, where a cloud's instance metadata service answers with the
    # host's credentials: link-local addresses are unreachable from the session (which cannot change its routes).
    subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "route", "add", "prohibit", LINK_LOCAL],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        check=True,
    )
    return Network(slirp, exit_write)


def signal_container(container_id: str, signal_name: str, all_processes: bool = True) -> None:
    """Signal every process of the container, or only its first one."""
    options = ["--all"] if all_processes else []
    subprocess.run([_runtime(), "kill", *options, container_id, signal_name], capture_output=True, check=False)


def delete(container_id: str) -> None:
    """Kill and remove the container, whatever state it is in; nothing to do when there is none. A job container
    (``host.py``) of that name takes the sandbox inside it down with it, all but the sandbox's cgroups, which are the
    host's: they are removed here too."""
    subprocess.run([_runtime(), "delete", "--force", container_id], capture_output=True, check=False)
    for cgroup in (
        *Path("/sys/fs/cgroup").glob(f"*/studios/{container_id}"),
        Path(f"/sys/fs/cgroup/studios/{container_id}"),
    ):
        with contextlib.suppress(OSError):
            cgroup.rmdir()


def containers() -> list[tuple[str, str]]:
    """(id, bundle folder) of every container the runtime knows."""
    path = runtime()
    if path is None:
        return []
    listing = subprocess.run([path, "list", "--format", "json"], capture_output=True, text=True, check=False)
    return [(entry["id"], entry["bundle"]) for entry in json.loads(listing.stdout or "null") or []]


def exists(container_id: str) -> bool:
    return subprocess.run([_runtime(), "state", container_id], capture_output=True).returncode == 0


def unmount_all_under(directory: str | Path) -> None:
    """Lazily unmount every mount below ``directory``, deepest first."""
    prefix = str(Path(directory).resolve()) + "/"
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount_point in sorted((m for m in mounted if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)


def remove(layout: Layout) -> None:
    """Unmount and delete what the session left in its folder; safe to call at any point."""
    unmount_all_under(layout.session_dir)
    for path in (layout.rootfs, layout.layer):
        if path.exists() and not os.path.ismount(path):
            shutil.rmtree(path, ignore_errors=True)
    layout.image.unlink(missing_ok=True)
    # Only empty mount points: a data mount that failed to unmount must never be emptied.
    for mount_point in layout.data.glob("*"):
        with contextlib.suppress(OSError):
            mount_point.rmdir()
    with contextlib.suppress(OSError):
        layout.data.rmdir()


def oom_kills(container_id: str) -> int:
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
