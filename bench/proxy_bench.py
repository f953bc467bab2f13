"""The connect proxy against configurable-http-proxy and against going straight to JupyterLab, before and after.

Runs the product twice side by side on PostgreSQL and Redis (``manage.py runstudios``, demo data, sessions as
plain processes: the proxy's cost does not depend on the sandbox): the checkout at BEFORE (a git ref, checked out
in a temporary worktree; ``main`` by default) and this checkout. On each, as the demo ``maintain`` user, it starts
a JupyterLab studio; then it measures, ROUNDS times, each target in turn (in a shuffled order) with the same
clients:

* Studios' proxy before and after, on each studio's session origin (with the origin's cookie from the ticket round
  trip);
* configurable-http-proxy 5 (installed with npm into CHP_DIR, ~/.cache/studios-bench/chp by default) in front of
  the after platform's JupyterLab, passing the session's token header;
* that JupyterLab itself (through the session's gate, as the proxy reaches it), with the session's token header;

small GETs of ``api/status`` (wrk, Debian's package: requests/s, p50 and p99 at 1 and 10 connections for SECONDS
each; at 10 connections again while a tab polls each platform's studio list as fast as it answers), a
``kernel_info`` round trip on a kernel WebSocket (median of ROUND_TRIPS) and a 200 MB file download (curl, best of
3). Opening the kernel's WebSocket is measured on all the targets at once: WS_RUNS times, one open on each target in
a shuffled order (median of each), because JupyterLab's own time to open one (direct) moves by half from one second
to the next, more than the proxies differ. Prints each round's opens, then the median of the rounds as a table.

Usage: .venv/bin/python bench/proxy_bench.py [BEFORE] [SECONDS] [WS_RUNS] [ROUNDS]
Environment: BENCH_DATABASE (a PostgreSQL server URL, postgres://postgres@127.0.0.1:5432 by default; the bench
creates and drops its databases there), BENCH_REDIS_URL (redis://127.0.0.1:6379/1).
"""

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import websockets
from demo_platform import ROOT, DemoUser, demo_platform, free_port

BEFORE = sys.argv[1] if len(sys.argv) > 1 else "main"
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
WS_RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 100
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
DATABASE = os.environ.get("BENCH_DATABASE", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1")
CHP_DIR = Path(os.environ.get("CHP_DIR", Path.home() / ".cache/studios-bench/chp"))
DOWNLOAD_MB = 200
ROUND_TRIPS = 90


class Target:
    """One way to reach the session: where to connect, the Host header, and what proves the access."""

    def __init__(self, name, port, host, headers):
        self.name, self.port, self.host, self.headers = name, port, host, headers

    @property
    def origin(self):
        return f"http://{self.host}"

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def header_options(self, flag):
        return [
            part for name, value in {"Host": self.host, **self.headers}.items() for part in (flag, f"{name}: {value}")
        ]


def chp_binary():
    binary = CHP_DIR / "node_modules/.bin/configurable-http-proxy"
    if not binary.exists():
        CHP_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--prefix", str(CHP_DIR), "configurable-http-proxy@5"], check=True
        )
    return binary


@contextlib.contextmanager
def chp(endpoint):
    port, api_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            str(chp_binary()),
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            str(api_port),
            "--default-target",
            endpoint,
            "--log-level",
            "warn",
        ],
        env=dict(os.environ, CONFIGPROXY_AUTH_TOKEN=uuid.uuid4().hex),
    )
    try:
        while subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"]).returncode:
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait()


@contextlib.contextmanager
def before_checkout():
    """The BEFORE ref in a temporary git worktree, sharing this checkout's virtualenv."""
    folder = Path(tempfile.mkdtemp(prefix="studios-before-")) / "checkout"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(folder), BEFORE], cwd=ROOT, check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, check=True)


@contextlib.contextmanager
def database(name):
    """A fresh PostgreSQL database for one run."""

    def sql(statement):
        subprocess.run(["psql", "-q", f"{DATABASE}/postgres", "-c", statement], check=True)

    sql(f'DROP DATABASE IF EXISTS "{name}"')
    sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{DATABASE}/{name}"
    finally:
        sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wrk(target, connections):
    """Requests/s, p50 and p99 (ms) of GET api/status over ``connections`` kept-alive connections."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{SECONDS}s",
            "--latency",
            *target.header_options("-H"),
            target.url("/api/status"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{target.name}: refused requests\n{out}")

    def millis(label):
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), millis("50%"), millis("99%")


def kernel_message(msg_type, content):
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "username": "bench", "session": msg_id, "msg_type": msg_type, "version": "5.3"}
    message = {"header": header, "parent_header": {}, "metadata": {}, "channel": "shell", "content": content}
    return json.dumps(message), msg_id


async def reply_to(socket, msg_id, msg_type):
    while True:
        message = json.loads(await socket.recv())
        if message.get("parent_header", {}).get("msg_id") == msg_id and message["msg_type"] == msg_type:
            return message


def open_socket(target, kernel):
    return websockets.connect(
        f"ws://{target.host}/api/kernels/{kernel}/channels",
        host="127.0.0.1",
        port=target.port,
        additional_headers=target.headers,
        origin=target.origin,
        max_size=None,
    )


async def websocket_opens(targets):
    """{target name: median ms to open the kernel's WebSocket}, the targets' opens interleaved."""
    opens = {target.name: [] for target, _ in targets}
    for _ in range(WS_RUNS):
        for target, kernel in random.sample(targets, len(targets)):
            began = time.perf_counter()
            async with open_socket(target, kernel):
                opens[target.name].append(time.perf_counter() - began)
    return {name: statistics.median(times) * 1000 for name, times in opens.items()}


async def round_trip(target, kernel):
    """Median ms of a kernel_info round trip on the kernel's WebSocket."""
    trips = []
    async with open_socket(target, kernel) as socket:
        for _ in range(ROUND_TRIPS):
            message, msg_id = kernel_message("kernel_info_request", {})
            began = time.perf_counter()
            await socket.send(message)
            await reply_to(socket, msg_id, "kernel_info_reply")
            trips.append(time.perf_counter() - began)
    return statistics.median(trips) * 1000


async def write_big_file(target, kernel):
    code = f"open('proxy-bench.bin', 'wb').write(bytes({DOWNLOAD_MB} << 20))"
    async with open_socket(target, kernel) as socket:
        message, msg_id = kernel_message(
            "execute_request", {"code": code, "silent": False, "store_history": False, "user_expressions": {}}
        )
        await socket.send(message)
        await reply_to(socket, msg_id, "execute_reply")


def download(target):
    """MB/s of the best of three downloads of the file."""
    seconds = []
    for _ in range(3):
        out = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total} %{size_download} %{http_code}",
                *target.header_options("-H"),
                "-H",
                f"Referer: {target.origin}/lab",  # JupyterLab serves files without a token to its own pages only
                target.url("/files/proxy-bench.bin"),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        if out[2] != "200" or int(out[1]) != DOWNLOAD_MB << 20:
            raise SystemExit(f"{target.name}: download failed: {out}")
        seconds.append(float(out[0]))
    return DOWNLOAD_MB / min(seconds)


@contextlib.contextmanager
def polling(users):
    """A tab of each user's polling their workspace's studio list, one request after the other, in a thread."""
    stop = threading.Event()
    refused = []

    def poll():
        while not stop.is_set():
            for user in users:
                status = user.http.get("/w/demo/analysis/").status_code
                if status != 200:
                    refused.append(status)
                    return

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if refused:  # the figures measured meanwhile were not polled
        raise SystemExit(f"the polled studio list answered {refused[0]}")


def measure(target, kernel, users):
    one, ten = wrk(target, 1), wrk(target, 10)
    with polling(users):
        ten_polled = wrk(target, 10)
    return {
        "1 conn": one,
        "10 conn": ten,
        "10 conn polled": ten_polled,
        "ws trip": asyncio.run(round_trip(target, kernel)),
        "download": download(target),
    }


@contextlib.contextmanager
def studio_session(label, root):
    """The product at ``root`` on a fresh database, a JupyterLab studio running on it with a kernel and the file to
    download; yields (the target through its proxy, the kernel, the session's endpoint and token, the maintainer)."""
    with (
        database(f"proxy_bench_{label}") as database_url,
        demo_platform(
            root,
            DATABASE_URL=database_url,
            REDIS_URL=REDIS_URL,
            STUDIOS_LOCAL_ISOLATION="off",
            STUDIOS_TASK_QUEUE=f"proxy-bench-{label}",
        ) as (base, password, env),
    ):
        maintainer = DemoUser(base, "maintain", password)
        studio_id = maintainer.add_studio("bench")
        maintainer.post(f"/studios/{studio_id}/start/")
        maintainer.wait_for(studio_id, "running")
        try:
            session = maintainer.session(studio_id)
            cookie = "; ".join(f"{name}={value}" for name, value in session.cookies.items())
            proxy = Target(f"Studios {label}", session.base_url.port, session.headers["host"], {"Cookie": cookie})
            session.get("/lab")
            xsrf = session.cookies.get("_xsrf")
            kernel = session.post("/api/kernels", json={"name": "python3"}, headers={"X-XSRFToken": xsrf}).json()["id"]
            asyncio.run(write_big_file(proxy, kernel))
            yield proxy, kernel, *session_endpoint(env, root, studio_id), maintainer
        finally:
            maintainer.post(f"/studios/{studio_id}/stop/")
            maintainer.wait_for(studio_id, "stopped")


def session_endpoint(env, root, studio_id):
    """The session's endpoint and token, read from the platform's database."""
    code = (
        f"from studios.models import Studio; s = Studio.objects.get(pk={studio_id}).session; print(s.endpoint, s.token)"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[-2], out[-1]


def table(rounds):
    """The median of each measure over the rounds."""
    results = {
        name: {
            measure: (
                tuple(statistics.median(r[name][measure][i] for r in rounds) for i in range(3))
                if isinstance(rounds[0][name][measure], tuple)
                else statistics.median(r[name][measure] for r in rounds)
            )
            for measure in rounds[0][name]
        }
        for name in rounds[0]
    }
    rows = [
        ("GET req/s, 1 conn", lambda r: f"{r['1 conn'][0]:.0f}"),
        ("GET p50 / p99 ms, 1 conn", lambda r: f"{r['1 conn'][1]:.2f} / {r['1 conn'][2]:.2f}"),
        ("GET req/s, 10 conn", lambda r: f"{r['10 conn'][0]:.0f}"),
        ("GET p50 / p99 ms, 10 conn", lambda r: f"{r['10 conn'][1]:.2f} / {r['10 conn'][2]:.2f}"),
        ("GET req/s, 10 conn, a tab polling the studio list", lambda r: f"{r['10 conn polled'][0]:.0f}"),
        ("WebSocket open ms (median)", lambda r: f"{r['ws open']:.2f}"),
        ("WebSocket kernel_info round trip ms (median)", lambda r: f"{r['ws trip']:.2f}"),
        (f"{DOWNLOAD_MB} MB download MB/s (best of 3)", lambda r: f"{r['download']:.0f}"),
    ]
    names = list(results)
    print("| measure | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(results[name]) for name in names) + " |")


def main():
    if not shutil.which("wrk"):
        raise SystemExit("The bench needs wrk: apt-get install wrk")
    with (
        before_checkout() as root,
        studio_session("before", root) as (before, before_kernel, _, _, before_user),
        studio_session("after", ROOT) as (after, kernel, endpoint, token, after_user),
        chp(endpoint) as chp_port,
    ):
        direct_port = int(endpoint.rsplit(":", 1)[1])
        targets = [
            (before, before_kernel),
            (after, kernel),
            (Target("CHP 5", chp_port, f"127.0.0.1:{chp_port}", {"X-Studios-Session-Token": token}), kernel),
            (Target("direct", direct_port, f"127.0.0.1:{direct_port}", {"X-Studios-Session-Token": token}), kernel),
        ]
        rounds = []
        for number in range(ROUNDS):
            # In a new order each round: a target measured first or last each time would take the machine's drift.
            measured = {
                target.name: measure(target, kernel, (before_user, after_user))
                for target, kernel in random.sample(targets, len(targets))
            }
            results = {target.name: measured[target.name] for target, _ in targets}
            for name, ws_open in asyncio.run(websocket_opens(targets)).items():
                results[name]["ws open"] = ws_open
            rounds.append(results)
            opens = ", ".join(f"{name} {result['ws open']:.2f}" for name, result in results.items())
            print(f"round {number + 1} of {ROUNDS} done; WebSocket open ms: {opens}", file=sys.stderr)
        print(f"Medians of {ROUNDS} rounds; each round measures every target in turn.")  # before stopping anything
        table(rounds)


if __name__ == "__main__":
    main()
