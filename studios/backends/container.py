"""Isolated local sessions: the session agent as the first process of a container under a real
OCI runtime (runc or crun, from Debian's packages).

The container's root is an overlay: the template's root filesystem below (the host's ``/`` by
default), the session's writable layer above. The layer is its own ext4 filesystem in a
sparse file of the quota's size, loop-mounted, so a session that fills it gets ENOSPC while the
platform and other sessions carry on; every start gets a fresh one. CPU and memory limits are
the runtime's cgroup settings; a seccomp filter refuses the system calls a session never needs;
datasets are bind mounts at /workspace/data/<name>, read-only unless writable. Each container
has its own network namespace, connected by slirp4netns: it reaches the outside world, but not
the host's loopback, where the platform's database, broker and other sessions listen. The
agent's two ports are forwarded from the host's loopback, and the platform is a Unix socket in
the container that socat relays to the platform's address. The platform's data dir is hidden
under an empty tmpfs.
With the host's root as the lower layer, a session can read the rest of the host's files (its
writes never reach them): configure a template root filesystem where that matters.
"""

import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

RUNTIMES = ("runc", "crun")
LAYER_IN_CONTAINER = "/.studios/layer"
PLATFORM_SOCKET_IN_CONTAINER = "/.studios/platform/platform.sock"
SOCKETS_DIR = Path("/run/studios")
# slirp4netns's built-in DNS forwarder, reachable from the container whatever the host's resolver is.
SLIRP_DNS = "10.0.2.3"
DATA_IN_CONTAINER = "/workspace/data"
# Where a container's mount points and scratch space appear in its writable layer: never saved.
LAYER_EXCLUDED = ["workspace/data", ".studios"]
# System calls a session never needs that reach kernel state no namespace isolates (keyrings, modules, BPF,
# the clock, swap) or open new namespaces, the way to privileges a container does not have: refused with
# EPERM, as container engines' default profiles refuse them.
DENIED_SYSCALLS = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "delete_module", "finit_module", "init_module",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount", "open_by_handle_at", "perf_event_open",
    "pivot_root", "quotactl", "reboot", "request_key", "setns", "settimeofday", "swapoff", "swapon", "umount2",
    "unshare", "userfaultfd",
]  # fmt: skip
SECCOMP_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
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
    missing = [tool for tool in ("slirp4netns", "socat") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} missing, which give sessions their own network (apt-get install slirp4netns socat)"
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
        self.resolv_conf = self.session_dir / "resolv.conf"
        # Unix socket paths are limited to 107 bytes: the sockets live in a short folder named after this one.
        sockets = SOCKETS_DIR / hashlib.sha256(str(self.session_dir.resolve()).encode()).hexdigest()[:16]
        self.network_api = sockets / "slirp4netns.sock"
        self.platform_dir = sockets / "platform"
        self.platform_socket = self.platform_dir / "platform.sock"


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
    shutil.rmtree(layout.network_api.parent, ignore_errors=True)


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
                "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            },
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def network_mounts(layout):
    """What the container's own network needs mounted: slirp4netns's DNS forwarder as its resolver, and the
    folder of the socket that leads to the platform (a socket on a read-only mount can still be connected to)."""
    layout.resolv_conf.write_text(f"nameserver {SLIRP_DNS}\n")
    layout.platform_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return [
        bind(layout.resolv_conf, "/etc/resolv.conf", writable=False),
        bind(layout.platform_dir, os.path.dirname(PLATFORM_SOCKET_IN_CONTAINER), writable=False),
    ]


def start(layout, config, container_id, ports, platform_address, log_file):
    """Create the container, connect its network, start it. Returns the host pid of its first process and
    the pids of its network helpers."""
    (layout.session_dir / "config.json").write_text(json.dumps(config, indent=1))
    subprocess.run(
        [runtime(), "create", "--bundle", str(layout.session_dir), container_id],
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, check=True,
    )  # fmt: skip
    state = subprocess.run([runtime(), "state", container_id], capture_output=True, text=True, check=True)
    pid = json.loads(state.stdout)["pid"]
    helpers = []
    try:
        connect_network(layout, pid, ports, platform_address, log_file, helpers)
        subprocess.run([runtime(), "start", container_id], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, check=True)
    except BaseException:
        for helper in helpers:
            helper.kill()
            helper.wait()
        raise
    return pid, [helper.pid for helper in helpers]


def connect_network(layout, pid, ports, platform_address, log_file, helpers):
    """Give the network namespace of process ``pid`` a way out (slirp4netns, without the host's loopback),
    forward ``ports`` from the host's loopback to it, and relay the platform socket to ``platform_address``,
    a socat address such as ``TCP:127.0.0.1:8000`` (socat). The helper processes are added to ``helpers``."""
    ready, ready_to_write = os.pipe()
    slirp = subprocess.Popen(
        ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", f"--api-socket={layout.network_api}",
         f"--ready-fd={ready_to_write}", str(pid), "tap0"],
        pass_fds=(ready_to_write,), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
    )  # fmt: skip
    helpers.append(slirp)
    os.close(ready_to_write)
    with os.fdopen(ready, "rb") as signal_file:
        if signal_file.read(1) != b"1":
            raise OSError("slirp4netns could not connect the session's network; see the session log")
    for port in ports:
        _network_api(layout, {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": port, "guest_port": port})
    relay = subprocess.Popen(
        ["socat", f"UNIX-LISTEN:{layout.platform_socket},fork,mode=600", platform_address],
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
    )  # fmt: skip
    helpers.append(relay)
    deadline = time.monotonic() + 10
    while not layout.platform_socket.exists():
        if relay.poll() is not None or time.monotonic() > deadline:
            raise OSError("socat could not open the session's way to the platform; see the session log")
        time.sleep(0.01)


def _network_api(layout, forward):
    with socket.socket(socket.AF_UNIX) as api:
        api.connect(str(layout.network_api))
        api.sendall(json.dumps({"execute": "add_hostfwd", "arguments": forward}).encode())
        answer = json.loads(api.recv(4096))
    if "error" in answer:
        raise OSError(f"slirp4netns could not forward port {forward['host_port']}: {answer['error']}")


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
