"""Server time of the studio list at 10,000 studios, of the Checkpoints tab at 1,000 checkpoints and of the API
beside the pages, for this checkout and for an anchor commit (before), in the same run; and the CLI's startup.

Fills the PostgreSQL database named by DATABASE_URL (once: a workspace ``bench/big`` of 10,000 studios, half of
them named rnaseq-*, the newest starting so that the anchor's list polls; ``bench/hundred`` of 100 studios with
two saved checkpoints each, 20 of them clones; ``bench/starts`` with one studio to start; a studio with 1,000
checkpoints), then, ROUNDS times, measures each checkout in a process of its own (its code, Django's test client
in that process: the time from the request to the response, middleware and all, without a network), this
checkout and the anchor's alternately. Prints the median of each measure over every request of every round, the
median CPU time of the measuring process (the web process's own share: what load on the machine does not change,
unlike the time, which waits for the CPU and for PostgreSQL) and the response sizes. The anchor is checked out in a temporary git worktree; both share the database (the anchor
must have the same migrations). Starts are reset through the ORM after each one (no worker runs).

Usage: DATABASE_URL=postgres://… .venv/bin/python bench/list_bench.py [ROUNDS] [REQUESTS] [ANCHOR]
(2 rounds of 5 requests against 1864b74 by default.)
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The list before it was paginated and the API before its list read checkpoints per page (issue 14 and 15's
# state when this bench was written).
ANCHOR = "1864b74"

BIG, HUNDRED, STARTS = 10_000, 100, 1
CHECKPOINTS = 1_000
# (name, method, path, options): the measures, in the order printed.
MEASURES = [
    ("list page, 10,000 studios", "GET", "/w/bench/big/", {}),
    ("search rnaseq (5,000 of 10,000 match)", "GET", "/w/bench/big/?q=rnaseq", {}),
    (
        "search author:author-3 status:stopped (1,000 match)",
        "GET",
        "/w/bench/big/?q=author:author-3+status:stopped",
        {},
    ),
    ("the list's htmx poll, 10,000 studios", "GET", "/w/bench/big/", {"htmx": True}),
    ("Checkpoints tab, 1,000 checkpoints", "GET", "/studios/{many_checkpoints}/?tab=checkpoints", {}),
    ("list page, 100 studios", "GET", "/w/bench/hundred/", {}),
    (
        "API list, 50 studios (max=50, as many as the page)",
        "GET",
        "/api/v1/workspaces/bench/hundred/studios/?max=50",
        {"token": True},
    ),
    ("API list, 100 studios (max=100)", "GET", "/api/v1/workspaces/bench/hundred/studios/?max=100", {"token": True}),
    ("start, page (POST)", "POST", "/studios/{to_start}/start/", {"reset": True}),
    ("start, API (POST)", "POST", "/api/v1/studios/{to_start}/start/", {"token": True, "reset": True}),
]


def setup_django(root):
    sys.path.insert(0, str(root))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studios_project.settings")
    import django

    django.setup()


def fill():
    """The bench's workspaces, made once; {name: id} of the studios the measures name."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from checkpoints.models import Checkpoint
    from studios.models import ComputeEnvironment, Membership, Organization, Role, Session, Studio, Workspace

    User = get_user_model()
    organization, made = Organization.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    if made:
        authors = [User.objects.create_user(f"author-{n}") for n in range(10)]
        for slug, count in (("big", BIG), ("hundred", HUNDRED), ("starts", STARTS)):
            workspace = Workspace.objects.create(organization=organization, name=slug, slug=slug)
            for author in authors:
                Membership.objects.create(workspace=workspace, user=author, role=Role.ADMIN)
            environment = ComputeEnvironment.objects.create(
                workspace=workspace, name="local", work_dir="/tmp/studios-bench-work", status="available"
            )
            Studio.objects.bulk_create(
                Studio(
                    workspace=workspace,
                    name=f"{'rnaseq' if n % 2 else 'variant'}-{n:05}",
                    description="A studio of the bench",
                    compute_environment=environment,
                    author=authors[n % len(authors)],
                )
                for n in range(count)
            )
        newest = Studio.objects.filter(workspace__slug="big").latest("pk")
        session = Session.objects.create(studio=newest, token="bench", cpus=1, memory_mb=1024)
        Studio.objects.filter(pk=newest.pk).update(status="starting", session=session)
        saved = timezone.now()
        hundred = list(Studio.objects.filter(workspace__slug="hundred").order_by("pk"))
        Checkpoint.objects.bulk_create(
            Checkpoint(studio=studio, name=f"{studio.name}_{n}", state="finalized", manifest_key="m", saved=saved)
            for studio in hundred
            for n in (1, 2)
        )
        for clone, parent in zip(hundred[:20], hundred[20:40], strict=True):
            clone.parent_checkpoint = parent.checkpoints.first()
            clone.save(update_fields=["parent_checkpoint"])
            clone.checkpoints.all().delete()
        many = hundred[-1]
        Checkpoint.objects.bulk_create(
            Checkpoint(studio=many, name=f"many_{n:04}", state="finalized", manifest_key="m", saved=saved)
            for n in range(CHECKPOINTS)
        )
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # the planner's statistics, as a database in use has them
    return {
        "many_checkpoints": Studio.objects.filter(workspace__slug="hundred").latest("pk").pk,
        "to_start": Studio.objects.get(workspace__slug="starts").pk,
    }


def reset(studio_id):
    """Make the started studio stopped again, as it was."""
    from checkpoints.models import Checkpoint
    from studios.models import ActiveMount, Session, Studio

    if not Studio.objects.filter(pk=studio_id, status="starting").exists():
        raise SystemExit("the start was refused")
    Studio.objects.filter(pk=studio_id).update(status="stopped", session=None)
    ActiveMount.objects.filter(studio_id=studio_id).delete()
    Checkpoint.objects.filter(studio_id=studio_id).delete()
    Session.objects.filter(studio_id=studio_id).delete()


def measure(root, requests):
    """In the checkout ``root``: each measure ``requests`` times (after one to warm up), as JSON on stdout."""
    setup_django(root)
    from django.contrib.auth import get_user_model
    from django.test import Client

    from studios import tokens

    ids = fill()
    user = get_user_model().objects.get(username="author-0")
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    token = tokens.issue_token(user, "bench")[1]
    results = {}
    for name, method, path, options in MEASURES:
        headers = {"Authorization": f"Bearer {token}"} if options.get("token") else {}
        if options.get("htmx"):
            headers["HX-Request"] = "true"
        url = path.format(**ids)
        times, cpu_times, size = [], [], 0
        for n in range(requests + 1):
            started, cpu_started = time.perf_counter(), time.process_time()
            response = client.generic(method, url, headers=headers)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            if response.status_code not in (200, 202, 302):
                raise SystemExit(f"{name}: {response.status_code} {response.content[:300]!r}")
            if options.get("reset"):
                reset(ids["to_start"])  # and says whether it had started
            if n:
                times.append(elapsed * 1000)
                cpu_times.append(cpu * 1000)
                size = len(response.content)
        results[name] = {"ms": times, "cpu ms": cpu_times, "bytes": size}
    json.dump(results, sys.stdout)


def cli_startup(runs=5):
    """Seconds from starting the installed ``studios`` command to its help printed (no request)."""
    command = Path(sys.executable).parent / "studios"
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        subprocess.run([command, "--help"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main(rounds, requests, anchor_commit):
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database the bench may fill.")
    data_dir = tempfile.mkdtemp(prefix="studios-list-bench-")
    anchor = Path(data_dir) / "anchor"
    env = dict(os.environ, STUDIOS_DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="studios_project.settings")
    env.pop("REDIS_URL", None)  # starts queue their task in the embedded filesystem broker, which nothing reads
    env.pop("DEBUG", None)
    subprocess.run(["git", "worktree", "add", "--detach", "-q", anchor, anchor_commit], cwd=ROOT, check=True)
    try:
        for command in (["prepare"], ["migrate", "-v0"]):
            subprocess.run(
                [sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
            )
        results: dict[str, dict[str, list]] = {"before": {}, "after": {}}
        for _ in range(rounds):
            for label, root in (("before", anchor), ("after", ROOT)):
                answer = subprocess.run(
                    [sys.executable, __file__, "--measure", str(root), str(requests)],
                    cwd=root,
                    env=env,
                    check=True,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for name, figures in json.loads(answer.stdout).items():
                    results[label].setdefault(name, []).extend(figures["ms"])
                    results[label].setdefault(name + " cpu", []).extend(figures["cpu ms"])
                    results[label][name + " bytes"] = [figures["bytes"]]
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", anchor], cwd=ROOT, check=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"median of {rounds} x {requests} requests; before = {anchor_commit}, load {os.getloadavg()[0]:.1f}")
    print("| measure | before | after |\n|---|---|---|")
    for name, *_ in MEASURES:
        cells = []
        for label in ("before", "after"):
            median = statistics.median(results[label][name])
            cpu = statistics.median(results[label][name + " cpu"])
            size = results[label][name + " bytes"][0]
            cells.append(f"{median:.1f} ms (CPU {cpu:.1f} ms, {size / 1000:,.1f} kB)")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(f"CLI startup (studios --help), median of 5: {cli_startup() * 1000:.0f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        arguments = sys.argv[1:]
        main(
            int(arguments[0]) if arguments else 2,
            int(arguments[1]) if len(arguments) > 1 else 5,
            arguments[2] if len(arguments) > 2 else ANCHOR,
        )
