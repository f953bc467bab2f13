"""Start-to-running time of a local studio (JupyterLab by default), and the proxy's added latency.

Runs the whole product (``manage.py runstudios``) on embedded defaults in a temporary data
dir, then, as the demo ``maintain`` user over HTTP:
  * starts and stops one studio RUNS times, timing Start (the POST) to ``running`` (polling
    the status every 50 ms);
  * times REQUESTS small GETs of the IDE's status (JupyterLab's api/status, code-server's healthz)
    through the proxy and straight to the session's endpoint (with the session's token header),
    interleaved.
Prints medians. Usage: .venv/bin/python bench/session_bench.py [RUNS] [REQUESTS] [TEMPLATE]
"""

import statistics
import sys
import time

import httpx
from demo_platform import DemoUser, demo_platform, setup_django

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
TEMPLATE = sys.argv[3] if len(sys.argv) > 3 else "jupyterlab"
STATUS_PATHS = {"jupyterlab": "api/status", "vscode": "healthz"}


def main():
    with demo_platform() as (base, password, env):
        maintainer = DemoUser(base, "maintain", password)
        studio_id = maintainer.add_studio("bench", TEMPLATE)

        start_times = []
        for run in range(RUNS):
            began = time.perf_counter()
            maintainer.post(f"/studios/{studio_id}/start/")
            maintainer.wait_for(studio_id, "running")
            start_times.append(time.perf_counter() - began)
            if run < RUNS - 1:
                maintainer.post(f"/studios/{studio_id}/stop/")
                maintainer.wait_for(studio_id, "stopped")

        setup_django(env)
        from studios.models import Studio

        studio = Studio.objects.get(pk=studio_id)
        direct = httpx.Client(
            base_url=studio.session.endpoint, timeout=30, headers={"X-Studios-Session-Token": studio.session.token}
        )
        http = maintainer.session(studio_id)  # through the proxy, on the studio's own origin
        path = f"/{STATUS_PATHS[TEMPLATE]}"
        via_proxy, straight = [], []
        for _ in range(REQUESTS):
            for client, samples in ((http, via_proxy), (direct, straight)):
                began = time.perf_counter()
                assert client.get(path).status_code == 200
                samples.append(time.perf_counter() - began)
        maintainer.post(f"/studios/{studio_id}/stop/")
        maintainer.wait_for(studio_id, "stopped")

        print(
            f"start to running, median of {RUNS}: {statistics.median(start_times):.2f} s "
            f"(runs: {', '.join(f'{t:.2f}' for t in start_times)})"
        )
        proxied, plain = statistics.median(via_proxy) * 1000, statistics.median(straight) * 1000
        print(
            f"GET {STATUS_PATHS[TEMPLATE]}, median of {REQUESTS}: via proxy {proxied:.2f} ms, direct {plain:.2f} ms, "
            f"added by the proxy {proxied - plain:.2f} ms"
        )


if __name__ == "__main__":
    main()
