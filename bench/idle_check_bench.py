"""The idle stop's cost per session: the CPU time of one look of the supervisor's work check (``supervisor.work``)
at a JupyterLab with a kernel and a terminal, on the supervisor's side and on the Jupyter server's, and of one read
of a cgroup's CPU time (VS Code, RStudio). The check runs once a minute per session with an idle stop.

Usage: .venv/bin/python bench/idle_check_bench.py [LOOKS]
"""

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studios.supervisor import work


def free_port():

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(looks):
    port, root = free_port(), tempfile.mkdtemp()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}"),
            *("--IdentityProvider.token=", "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(lambda: (server.terminate(), server.wait()))
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "api/status", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    for path in ("api/kernels", "api/terminals"):  # what a session has open
        urllib.request.urlopen(urllib.request.Request(url + path, data=b"{}", method="POST"))
    time.sleep(3)

    def server_cpu():
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    watch = work.WorkWatch("jupyterlab", url, "")
    before = server_cpu()
    for _ in range(looks):
        watch.working()
    served = server_cpu() - before
    began = time.thread_time()
    for _ in range(1000):
        work.cgroup_cpu_seconds("bench")
    cgroup = (time.thread_time() - began) / 1000
    print(
        json.dumps(
            {
                "looks": looks,
                "jupyterlab_supervisor_ms_per_look": round(1000 * watch.cpu_spent / looks, 2),
                "jupyterlab_server_ms_per_look": round(1000 * served / looks, 2),
                "cgroup_read_us": round(1e6 * cgroup, 1),
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
