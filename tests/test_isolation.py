"""Isolated local sessions in real runc containers: the host untouched, mounts, limits, the layer quota."""

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from checkpoints.models import Checkpoint
from studios import lifecycle, tasks
from studios.models import Role, StudioStatus
from studios.supervisor import sandbox
from studios.tasks import reconcile_sessions

from .conftest import host_address
from .factories import make_dataset, make_member, make_studio, make_workspace
from .live import (
    Browser,
    debian_package,
    execute,
    make_wheel,
    pid_alive,
    run,
    session_supervisor,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem())


@pytest.fixture
def world(live_platform, tmp_path):
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    environment = workspace.compute_environments.get()
    environment.writable_data_paths = [str(tmp_path / "scratch")]
    environment.save()
    user = make_member(workspace, Role.MAINTAIN)
    return live_platform, workspace, user


def started(platform, workspace, user, **fields):
    studio = make_studio(
        workspace, author=user, cpus=fields.pop("cpus", 1), memory_mb=fields.pop("memory_mb", 1024), **fields
    )
    lifecycle.start_studio(user, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    assert studio.session.handle["container"]
    return studio


def session_layer(studio):
    """The session's writable layer as its supervisor sees it: the session's mounts exist only in its mount
    namespace."""
    pid, folder = session_supervisor(studio.session.handle)
    return Path(f"/proc/{pid}/root{sandbox.Layout(folder).upper}")


def supervisor_helpers(studio):
    """The pids of the supervisor's helper processes (slirp4netns, rclone)."""
    pid, _ = session_supervisor(studio.session.handle)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child) for child in children if Path(f"/proc/{child}/comm").read_text().strip() in ("slirp4netns", "rclone")
    ]


def test_installs_and_edits_land_in_the_layer_never_on_the_host(world, tmp_path):
    platform, workspace, user = world
    # The packages reach the session as a dataset: nothing of the host's outside its image is in sight.
    packages = tmp_path / "packages"
    packages.mkdir()
    wheel, deb = (
        f"/workspace/data/packages/{Path(made).name}" for made in (make_wheel(packages), debian_package(packages))
    )
    studio = started(platform, workspace, user, datasets=[make_dataset(workspace, "packages", str(packages))])
    probe = Path("/etc/studios-isolation-probe")
    printed = run(
        platform,
        studio,
        user,
        "import os, subprocess, sys\n"
        f"open('{probe}', 'w').write('inside')\n"
        f"pip = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '{wheel}'], capture_output=True)\n"
        f"dpkg = subprocess.run(['dpkg', '-i', '{deb}'], capture_output=True)\n"
        "import greeting\n"
        f"print(open('{probe}').read(), pip.returncode, dpkg.returncode, greeting.hello(), os.getpid(), sep='|')",
    )
    *installed, pid_inside = printed.split("|")
    assert installed == ["inside", "0", "0", "hello from a checkpoint"]
    assert int(pid_inside) < 100  # its own PID namespace
    # The host is untouched: no file in /etc, no Python package, no Debian package.
    assert not probe.exists()
    assert importlib.util.find_spec("greeting") is None
    assert subprocess.run(["dpkg", "-s", "studios-probe"], capture_output=True).returncode != 0
    assert not Path("/usr/share/studios-probe").exists()
    upper = session_layer(studio)
    assert (upper / "etc/studios-isolation-probe").read_text() == "inside"
    assert (upper / "usr/share/studios-probe/README").exists()
    assert "Package: studios-probe" in (upper / "var/lib/dpkg/status").read_text()
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_a_session_cannot_open_namespaces_or_reach_the_kernels_keyrings(world):
    """Denied by the container's seccomp filter with EPERM (without it, both succeed for root in a container)."""
    platform, workspace, user = world
    studio = started(platform, workspace, user)
    probe = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.unshare(0x10000000), ctypes.get_errno())\n"  # CLONE_NEWUSER, in a single-threaded process
        "print(libc.syscall(250, 0, -3, 0), ctypes.get_errno())\n"  # keyctl(KEYCTL_GET_KEYRING_ID, session keyring)
    )
    printed = run(
        platform,
        studio,
        user,
        f"import subprocess, sys; print(subprocess.run([sys.executable, '-c', {probe!r}], capture_output=True, text=True).stdout)",
    )
    assert printed.split() == ["-1", "1", "-1", "1"]  # EPERM, EPERM
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_a_session_reaches_the_network_but_not_the_hosts_loopback(world):
    """The platform's database, its broker, the platform itself and other sessions listen on the host's loopback:
    a session in a container reaches none of them, nor a cloud's instance metadata service (the host's
    credentials), while what is on the network stays reachable."""
    platform, workspace, user = world
    with socket.create_server((host_address(), 0)) as elsewhere:
        threading.Thread(target=lambda: elsewhere.accept()[0].sendall(b"hello"), daemon=True).start()
        other = started(platform, workspace, user)
        studio = started(platform, workspace, user)
        targets = {
            "postgresql": ("127.0.0.1", 5432),
            "redis": ("127.0.0.1", 6379),
            "platform": ("127.0.0.1", int(platform.url.rsplit(":", 1)[1])),
            "other session": ("127.0.0.1", int(other.session.endpoint.rsplit(":", 1)[1])),
            "network": elsewhere.getsockname(),
            "instance metadata": ("169.254.169.254", 80),
        }
        printed = run(
            platform,
            studio,
            user,
            "import socket, errno\n"
            f"for name, address in {list(targets.items())!r}:\n"
            "    try:\n        with socket.create_connection(address, timeout=5) as s:\n            print(name, 'reached')\n"
            "    except OSError as e:\n        print(name, errno.errorcode.get(e.errno, e))\n"
            "print('dns', bool(socket.getaddrinfo('pypi.org', 443)))",
        )
    assert printed.splitlines() == [
        "postgresql ECONNREFUSED",
        "redis ECONNREFUSED",
        "platform ECONNREFUSED",
        "other session ECONNREFUSED",
        "network reached",
        "instance metadata EACCES",
        "dns True",
    ]
    # The platform reaches both sessions all the same; their network helpers end with them.
    helpers = supervisor_helpers(studio)
    assert len(helpers) == 1 and all(pid_alive(pid) for pid in helpers)
    for session in (studio, other):
        assert Browser(platform, user).session(session).http.get("/api/status").status_code == 200
        lifecycle.stop_studio(user, session)
        wait_for_status(session, StudioStatus.STOPPED, timeout=90)
    assert not any(pid_alive(pid) for pid in helpers)


def errored_after_reconciles(studio, timeout=30):
    """Run the reconcile, as the beat does, until the studio is errored."""

    def errored():
        reconcile_sessions()
        studio.refresh_from_db()
        return studio.status == StudioStatus.ERRORED

    wait_until(errored, timeout, f"studio {studio.name} to be errored", interval=0.5)


def test_a_session_whose_network_helper_dies_is_ended_with_the_reason(world):
    platform, workspace, user = world
    studio = started(platform, workspace, user)
    [slirp] = supervisor_helpers(studio)
    cid = studio.session.handle["container"]
    supervisor = studio.session.handle["pid"]  # the session's host, or its supervisor
    os.kill(slirp, signal.SIGKILL)
    errored_after_reconciles(studio)
    assert studio.status_reason.startswith("The session's network (slirp4netns) or a dataset's mount (rclone) ended")
    assert not pid_alive(supervisor)  # and with it the session's mounts
    assert not sandbox.exists(cid)


def test_datasets_are_mounted_read_only_unless_under_a_writable_path(world, tmp_path):
    platform, workspace, user = world
    (tmp_path / "reads").mkdir()
    (tmp_path / "reads/sample.fastq").write_text("@r1\nACGT\n")
    (tmp_path / "scratch/me").mkdir(parents=True)
    reads = make_dataset(workspace, "reads", str(tmp_path / "reads"))
    scratch = make_dataset(workspace, "scratch", str(tmp_path / "scratch/me"))
    studio = started(platform, workspace, user, datasets=[reads, scratch])
    printed = run(
        platform,
        studio,
        user,
        "import os, errno\n"
        "listing = sorted(os.listdir('/workspace/data'))\n"
        "try:\n    open('/workspace/data/reads/new.txt', 'w')\n    ro = 'writable'\n"
        "except OSError as e:\n    ro = errno.errorcode[e.errno]\n"
        "open('/workspace/data/scratch/result.txt', 'w').write('42')\n"
        "print(listing, ro, open('/workspace/data/reads/sample.fastq').read().split()[1])",
    )
    assert printed == "['reads', 'scratch'] EROFS ACGT"
    assert (tmp_path / "scratch/me/result.txt").read_text() == "42"
    assert not (tmp_path / "reads/new.txt").exists()
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_cpu_and_memory_limits_are_cgroup_settings(world):
    platform, workspace, user = world
    studio = started(platform, workspace, user, cpus=1, memory_mb=768)
    cid = studio.session.handle["container"]
    assert Path(f"/sys/fs/cgroup/cpu/studios/{cid}/cpu.cfs_quota_us").read_text().strip() == "100000"
    assert int(Path(f"/sys/fs/cgroup/memory/studios/{cid}/memory.limit_in_bytes").read_text()) == 768 * 2**20
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_exceeding_memory_kills_the_session_and_says_why(world):
    platform, workspace, user = world
    studio = started(platform, workspace, user, memory_mb=512)
    browser = Browser(platform, user)

    async def allocate():
        with contextlib.suppress(Exception):  # the kernel dies with its session: any ending will do
            await asyncio.wait_for(
                execute(platform, browser, studio, "x = bytearray(1500 * 2**20); print('survived')"), 30
            )

    asyncio.run(allocate())
    errored_after_reconciles(studio)
    assert studio.status_reason.startswith(
        "The session ran out of memory (limit 512 MB). Start it again with more memory."
    )
    assert "Changes made since checkpoint" in studio.status_reason
    first = Checkpoint.objects.get(studio=studio)
    assert first.restorable  # the checkpoint taken at start is intact


def test_the_writable_layer_has_a_quota(world, settings):
    platform, workspace, user = world
    settings.STUDIOS_WRITABLE_LAYER_MB = 64
    studio = started(platform, workspace, user)
    printed = run(
        platform,
        studio,
        user,
        "import os\ntry:\n    with open('/root/big', 'wb') as f:\n        for _ in range(100):\n            f.write(os.urandom(2**20))\n"
        "    print('wrote it all')\nexcept OSError as e:\n    print(e.strerror)",
    )
    assert printed == "No space left on device"
    # The platform and the session's IDE carry on.
    assert Browser(platform, user).session(studio).http.get("/api/status").status_code == 200
    page = Browser(platform, user).http.get(studio.get_absolute_url()).text
    assert "Writable layer:" in page
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_the_detail_page_says_whether_sessions_are_isolated(world, settings):
    platform, workspace, user = world
    studio = make_studio(workspace, author=user)
    browser = Browser(platform, user)
    assert "Each session runs in its own container" in browser.http.get(studio.get_absolute_url()).text
    settings.STUDIOS_LOCAL_ISOLATION = "off"
    tasks.check_compute_environment(studio.compute_environment_id)  # what the page says is what the check found
    page = browser.http.get(studio.get_absolute_url()).text
    assert "are not isolated (isolation is turned off)" in page
    lifecycle.start_studio(user, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    assert studio.session.handle["container"] == ""
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_s3_datasets_are_mounted_with_fuse(world, moto_server, monkeypatch):
    import boto3

    platform, workspace, user = world
    for name, value in (
        ("AWS_ENDPOINT_URL", moto_server),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="cohort")
    s3.put_object(Bucket="cohort", Key="runs/run1/sample.fastq", Body=b"@r1\nACGT\n")
    reads = make_dataset(workspace, "cohort-runs", "s3://cohort/runs/")
    studio = started(platform, workspace, user, datasets=[reads])
    printed = run(
        platform,
        studio,
        user,
        "import os, errno\n"
        "try:\n    open('/workspace/data/cohort-runs/new.txt', 'w').write('x')\n    ro = 'writable'\n"
        "except OSError as e:\n    ro = errno.errorcode[e.errno]\n"
        "print(os.listdir('/workspace/data/cohort-runs'), open('/workspace/data/cohort-runs/run1/sample.fastq').read().split()[1], ro)",
    )
    assert printed == "['run1'] ACGT EROFS"
    assert "new.txt" not in str(s3.list_objects_v2(Bucket="cohort").get("Contents"))
    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    assert not any("/data/cohort-runs" in line for line in Path("/proc/self/mounts").read_text().splitlines())
