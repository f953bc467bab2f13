"""What isolation costs: start-to-running and idle CPU and memory, a runc container versus a plain process.

Runs the whole product twice side by side (``manage.py runstudios`` on embedded defaults, each in its own
temporary data dir): one with isolated sessions (``STUDIOS_LOCAL_ISOLATION=auto``), one with plain processes
(``off``). As the demo ``maintain`` user it starts and stops a JupyterLab studio on each, alternating,
RUNS times, timing Start (the POST) to ``running``. After the last start both sessions are left idle for
SETTLE seconds, then for IDLE seconds it samples, for each session's processes (its supervisor on the host
and everything below it: the container's processes and network helper, or the plain IDE): CPU time used, and memory as PSS (each process's share of the pages
it maps), plus the container cgroup's own count (which includes the page cache of its files) and the disk
its writable layer's sparse file takes.
Usage: .venv/bin/python bench/isolation_bench.py [RUNS] [SETTLE] [IDLE]
"""

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

from demo_platform import DemoUser, demo_platform

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
SETTLE = float(sys.argv[2]) if len(sys.argv) > 2 else 20
IDLE = float(sys.argv[3]) if len(sys.argv) > 3 else 60
TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def session_processes(data_dir):
    """The pids of the one running session of the platform whose data dir is ``data_dir``: its supervisor on the
    host and every process below it (the container's first process is handed to the supervisor once runc has
    created it, and the network helper is its child; a plain IDE is its child too)."""
    children, supervisors = {}, []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            children.setdefault(int(stat_fields(proc.name)[1]), []).append(int(proc.name))
            if b"studios.supervisor" in (proc / "cmdline").read_bytes() and os.readlink(proc / "cwd").startswith(
                data_dir
            ):
                supervisors.append(int(proc.name))
    (supervisor,) = supervisors
    pids, below = [], [supervisor]
    while below:
        pid = below.pop()
        pids.append(pid)
        below += children.get(pid, [])
    return pids


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = stat_fields(pid)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def pss_mib(pids):
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


def main():
    with (
        demo_platform(STUDIOS_LOCAL_ISOLATION="auto") as container_platform,
        demo_platform(STUDIOS_LOCAL_ISOLATION="off") as plain_platform,
    ):
        users = {}
        for name, (base, password, _) in (("container", container_platform), ("plain", plain_platform)):
            user = DemoUser(base, "maintain", password)
            users[name] = (user, user.add_studio("bench"))
        times = {name: [] for name in users}
        for run in range(RUNS):
            for user, studio_id in users.values():
                began = time.perf_counter()
                user.post(f"/studios/{studio_id}/start/")
                user.wait_for(studio_id, "running")
                times[name].append(time.perf_counter() - began)
                if run < RUNS - 1:
                    user.post(f"/studios/{studio_id}/stop/")
                    user.wait_for(studio_id, "stopped")
        time.sleep(SETTLE)
        container_pids = session_processes(container_platform[2]["STUDIOS_DATA_DIR"])
        plain_pids = session_processes(plain_platform[2]["STUDIOS_DATA_DIR"])
        (group,) = Path("/sys/fs/cgroup/memory/studios").glob("*/")
        cpu_before = {"container": cpu_seconds(container_pids), "plain": cpu_seconds(plain_pids)}
        cgroup_cpu_before = int((Path(str(group).replace("/memory/", "/cpuacct/")) / "cpuacct.usage").read_text())
        pss = {"container": [], "plain": []}
        cgroup_memory = []
        deadline = time.monotonic() + IDLE
        while time.monotonic() < deadline:
            pss["container"].append(pss_mib(container_pids))
            pss["plain"].append(pss_mib(plain_pids))
            cgroup_memory.append(int((group / "memory.usage_in_bytes").read_text()) / 2**20)
            time.sleep(1)
        cpu = {"container": cpu_seconds(container_pids), "plain": cpu_seconds(plain_pids)}
        (layer_image,) = Path(container_platform[2]["STUDIOS_DATA_DIR"]).glob("sessions/*/layer.img")
        layer_disk = layer_image.stat().st_blocks * 512 / 2**20
        cgroup_cpu = (
            int((Path(str(group).replace("/memory/", "/cpuacct/")) / "cpuacct.usage").read_text()) - cgroup_cpu_before
        ) / 1e9
        for user, studio_id in users.values():
            user.post(f"/studios/{studio_id}/stop/")
            user.wait_for(studio_id, "stopped")

    for name in ("container", "plain"):
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name}: start to running, median of {RUNS}: {statistics.median(times[name]):.2f} s (runs: {runs})")
    for name in ("container", "plain"):
        share = (cpu[name] - cpu_before[name]) / IDLE * 100
        print(
            f"{name}: idle CPU over {IDLE:.0f} s: {share:.2f} % of one core; "
            f"memory (PSS of its processes), median: {statistics.median(pss[name]):.1f} MiB"
        )
    print(
        f"container cgroup: CPU {cgroup_cpu / IDLE * 100:.2f} % of one core; "
        f"memory incl. page cache, median {statistics.median(cgroup_memory):.1f} MiB; "
        f"its writable layer's file takes {layer_disk:.1f} MiB of disk (sparse)"
    )


if __name__ == "__main__":
    main()
