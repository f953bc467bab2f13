"""Start-to-running time of a local JupyterLab studio, and the proxy's added latency.

Runs the whole product (``manage.py runstudios``) on embedded defaults in a temporary data
dir, then, as the demo ``maintain`` user over HTTP:
  * starts and stops one studio RUNS times, timing Start (the POST) to ``running`` (polling
    the status every 50 ms);
  * times REQUESTS small GETs of JupyterLab's /api/status through the proxy and straight to
    JupyterLab (with the session's token header), interleaved.
Prints medians. Usage: .venv/bin/python bench/session_bench.py [RUNS] [REQUESTS]
"""

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 200


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main():
    data_dir = tempfile.mkdtemp(prefix="studios-bench-")
    port = free_port()
    env = dict(os.environ, STUDIOS_DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="studios_project.settings")
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    log = open(Path(data_dir) / "platform.log", "w")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runstudios", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                httpx.get(f"{base}/accounts/login/")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        password = (Path(data_dir) / "demo_password").read_text().strip()
        http = httpx.Client(base_url=base, timeout=60)
        page = http.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        http.post("/accounts/login/", data={"username": "maintain", "password": password, "csrfmiddlewaretoken": token})

        def post(path, data=None):
            csrf = http.cookies.get("csrftoken")
            return http.post(path, data={"csrfmiddlewaretoken": csrf, **(data or {})})

        added = post(
            "/w/demo/analysis/studios/add/",
            {"name": "bench", "template": "jupyterlab", "compute_environment": "1", "cpus": "1", "memory_mb": "2048"},
        )
        studio_id = int(re.search(r"/studios/(\d+)/", added.headers["location"]).group(1))

        def status():
            partial = http.get(f"/studios/{studio_id}/", headers={"HX-Request": "true"}).text
            return re.search(r'id="status-badge">(\w+)<', partial).group(1)

        def wait_for(wanted):
            while (current := status()) != wanted:
                if current == "errored":
                    raise SystemExit("studio errored")
                time.sleep(0.05)

        start_times = []
        for run in range(RUNS):
            began = time.perf_counter()
            post(f"/studios/{studio_id}/start/")
            wait_for("running")
            start_times.append(time.perf_counter() - began)
            if run < RUNS - 1:
                post(f"/studios/{studio_id}/stop/")
                wait_for("stopped")

        sys.path.insert(0, str(ROOT))
        os.environ.update(env)
        import django

        django.setup()
        from studios.models import Studio

        studio = Studio.objects.get(pk=studio_id)
        direct = httpx.Client(
            base_url=studio.session_endpoint, timeout=30, headers={"X-Studios-Session-Token": studio.session_token}
        )
        path = f"{studio.connect_path}api/status"
        via_proxy, straight = [], []
        for _ in range(REQUESTS):
            for client, samples in ((http, via_proxy), (direct, straight)):
                began = time.perf_counter()
                assert client.get(path).status_code == 200
                samples.append(time.perf_counter() - began)
        post(f"/studios/{studio_id}/stop/")
        wait_for("stopped")

        print(f"start to running, median of {RUNS}: {statistics.median(start_times):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in start_times)})")  # fmt: skip
        proxied, plain = statistics.median(via_proxy) * 1000, statistics.median(straight) * 1000
        print(f"GET api/status, median of {REQUESTS}: via proxy {proxied:.2f} ms, direct {plain:.2f} ms, "
              f"added by the proxy {proxied - plain:.2f} ms")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
