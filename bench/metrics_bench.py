"""What the metrics cost: per proxied request, and per scrape.

  * per request: an ASGI application that answers at once, called directly and through ``metrics.proxy_counted``
    (the counter and the latency histogram), interleaved in rounds; the difference is what every proxied request
    pays. Measured in-process and in prometheus-client's multiprocess mode (as ``runstudios`` runs it).
  * per scrape: ``metrics.exposition()`` with STUDIOS studios and EVENTS activity events in the database (SQLite,
    embedded defaults, a temporary data dir), median of 5.
Usage: .venv/bin/python bench/metrics_bench.py [STUDIOS] [EVENTS]
"""

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIOS = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
EVENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
CALLS, ROUNDS = 20_000, 7


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def nothing(message):
    pass


async def per_call(application):
    began = time.perf_counter()
    for _ in range(CALLS):
        await application({"type": "http"}, None, nothing)
    return (time.perf_counter() - began) / CALLS * 1e6


def per_request():
    from studios import metrics

    counted = metrics.proxy_counted(answer)
    direct, through = [], []
    for _ in range(ROUNDS):
        direct.append(asyncio.run(per_call(answer)))
        through.append(asyncio.run(per_call(counted)))
    return statistics.median(direct), statistics.median(through)


def per_scrape():
    from django.contrib.auth import get_user_model

    from studios import metrics
    from studios.models import ComputeEnvironment, Event, Organization, Studio, Workspace

    user = get_user_model().objects.create_user("bench")
    organization = Organization.objects.create(name="Bench", slug="bench")
    workspace = Workspace.objects.create(organization=organization, name="Bench", slug="bench")
    environment = ComputeEnvironment.objects.create(workspace=workspace, name="local", work_dir="/tmp/bench-work")
    Studio.objects.bulk_create(
        Studio(workspace=workspace, name=f"s{n}", author=user, compute_environment=environment, status=status)
        for n, status in zip(range(STUDIOS), ["stopped", "running", "errored"] * STUDIOS, strict=False)
    )
    studio = Studio.objects.first()
    kinds = [Event.Kind.RUNNING, Event.Kind.STOPPED, Event.Kind.STARTED, Event.Kind.CONNECTED]
    Event.objects.bulk_create(
        (
            Event(
                workspace=workspace,
                studio=studio,
                studio_name="s0",
                kind=kinds[n % 4],
                seconds=n % 90 if n % 4 < 2 else None,
            )
            for n in range(EVENTS)
        ),
        batch_size=5000,
    )
    times = []
    for _ in range(5):
        began = time.perf_counter()
        text = metrics.exposition()
        times.append(time.perf_counter() - began)
    return statistics.median(times), len(text)


def main():
    if os.environ.get("BENCH_CHILD"):
        import django

        django.setup()
        if os.environ["BENCH_CHILD"] == "scrape":
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
            seconds, size = per_scrape()
            print(f"scrape with {STUDIOS} studios and {EVENTS} events: {seconds * 1000:.1f} ms, {size} bytes")
        else:
            direct, through = per_request()
            mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "in-process"
            print(
                f"per request ({mode}): {direct:.2f} µs direct, {through:.2f} µs counted, {through - direct:.2f} µs added"
            )
        return
    for child, extra in (("request", {}), ("request", {"PROMETHEUS_MULTIPROC_DIR": ""}), ("scrape", {})):
        with tempfile.TemporaryDirectory(prefix="studios-bench-") as data_dir:
            env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            env.update(STUDIOS_DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="studios_project.settings", BENCH_CHILD=child)
            if "PROMETHEUS_MULTIPROC_DIR" in extra:
                os.makedirs(f"{data_dir}/metrics")
                env["PROMETHEUS_MULTIPROC_DIR"] = f"{data_dir}/metrics"
            subprocess.run([sys.executable, "manage.py", "prepare"], cwd=ROOT, env=env, check=True, capture_output=True)
            subprocess.run(
                [sys.executable, __file__, *sys.argv[1:]], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, check=True
            )


if __name__ == "__main__":
    main()
