"""Real outages: a PostgreSQL cluster and a Redis server of the tests' own, stopped and started by the tests, and the
platform served against them by uvicorn in a process of its own, as a deployment runs it. The shared PostgreSQL and
Redis are never touched.

Heartbeats are short (``HEARTBEAT_SECONDS``): a process is judged dead after three missed beats, 3 s here.
"""

import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from websockets.sync.client import connect
from websockets.sync.server import serve

from studios.splice import UVICORN_WS

from ..live import wait_until

REPO = Path(__file__).resolve().parents[2]
POSTGRES_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda folder: int(folder.parent.name))  # Debian's
HEARTBEAT_SECONDS = 1
DATABASE = "studios"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary folder, run by the postgres user. The platform reaches it over TCP; the
    tests and the platform-side helper over its Unix socket, which stays open when TCP is refused."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="studios-faults-postgres-"))
        shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.port = free_port()
        self.run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync")
        self.host_rules = (self.data / "pg_hba.conf").read_text()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/{DATABASE}"
        self.socket_url = f"postgres://postgres@{str(self.folder).replace('/', '%2F')}:{self.port}/{DATABASE}"

    def run(self, program, *arguments, check=True):
        command = ["runuser", "-u", "postgres", "--", POSTGRES_BIN / program, *arguments]
        return subprocess.run(command, check=check, capture_output=True, timeout=60)

    def start(self):
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", "-D", self.data, "-l", self.folder / "log", "-o", options, "-w", "-t", "30", "start")

    def stop(self):
        """As a crash: every connection is cut, with no goodbye."""
        self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def running(self):
        return self.run("pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def refuse_tcp(self, refused=True):
        """Refuse (or accept again) connections over TCP, the platform's, while the Unix socket stays open."""
        rules = "local all all trust\nhost all all all reject\n" if refused else self.host_rules
        (self.data / "pg_hba.conf").write_text(rules)
        if self.running():
            self.run("pg_ctl", "-D", self.data, "reload")

    def query(self, sql, *parameters, database=DATABASE):
        address = {"host": str(self.folder), "port": self.port, "user": "postgres", "dbname": database}
        with psycopg.connect(**address, autocommit=True) as db:
            cursor = db.execute(sql, parameters)
            return cursor.fetchall() if cursor.description else None

    def remove(self):
        if self.running():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRedis:
    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self.answers, 10, "the private Redis to answer")

    def answers(self):
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.ConnectionError:
            return False

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def running(self):
        return self.process is not None


class PlatformSide:
    """``platform_side.py``, running for the whole session: asked a command, it answers (within ``timeout``)."""

    def __init__(self, environment):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.platform_side"],
            cwd=REPO,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, *command, timeout=60):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        answer = self.process.stdout.readline() if ready else ""
        if not answer:
            pytest.fail(f"the platform side did not answer {command} (its error is above)")
        return json.loads(answer)

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """The private PostgreSQL (migrated) and Redis, and the platform-side helper; their environment."""
    postgres, broker = PrivatePostgres(), PrivateRedis()
    helper = None
    try:
        postgres.start()
        postgres.query(f"CREATE DATABASE {DATABASE}", database="postgres")
        broker.start()
        environment = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="studios_project.settings",
            DATABASE_URL=postgres.url,
            REDIS_URL=broker.url,
            SECRET_KEY=secrets.token_urlsafe(50),
            STUDIOS_DATA_DIR=str(tmp_path_factory.mktemp("platform-data")),
            STUDIOS_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
            STUDIOS_ACTIVITY_WRITE_SECONDS="0",
        )
        beside = dict(environment, DATABASE_URL=postgres.socket_url)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=beside, check=True, timeout=120)
        helper = PlatformSide(beside)
        yield postgres, broker, helper, environment
    finally:
        if helper is not None:
            helper.stop()
        if broker.running():
            broker.stop()
        postgres.remove()


@pytest.fixture
def postgres(services):
    return services[0]


@pytest.fixture
def broker(services):
    return services[1]


@pytest.fixture
def platform_side(services):
    return services[2]


class Platform:
    """The platform and the session proxy served by uvicorn, each a process of its own as ``runstudios`` serves
    them, against the private services; one log."""

    def __init__(self, environment, log):
        self.log_file = log
        self.url = f"http://127.0.0.1:{free_port()}"
        self.session_port = free_port()
        environment = dict(
            environment,
            STUDIOS_PUBLIC_URL=self.url.replace("127.0.0.1", "localhost"),
            STUDIOS_SESSION_PORT=str(self.session_port),
        )
        output = log.open("w")
        self.processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    application,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--lifespan",
                    "off",
                    "--log-level",
                    "warning",
                    f"--ws={ws}",
                ],
                cwd=REPO,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            for application, port, ws in (
                ("studios_project.asgi:application", self.url.rsplit(":", 1)[1], "auto"),
                ("studios_project.session_asgi:application", self.session_port, UVICORN_WS),
            )
        ]
        wait_until(self.serves, 30, "the platform and the session proxy to serve")

    def serves(self):
        try:
            platform = httpx.get(self.url + "/accounts/login/", timeout=5)
            proxy = httpx.get(f"http://127.0.0.1:{self.session_port}/", headers={"Host": "s1.localhost"}, timeout=5)
        except httpx.TransportError:
            return False
        return platform.status_code == 200 and proxy.status_code == 302

    def get(self, path, studio):
        return httpx.get(self.url + path, cookies={"sessionid": studio["cookie"]}, timeout=30)

    def session_host(self, studio):
        return f"s{studio['id']}.localhost:{self.session_port}"

    def get_session(self, path, studio):
        """``path`` on the studio's session origin, with its member's cookie there."""
        headers = {"Host": self.session_host(studio), "Cookie": f"studios-session={studio['session_cookie']}"}
        return httpx.get(f"http://127.0.0.1:{self.session_port}{path}", headers=headers, timeout=30)

    def open_socket(self, studio):
        """A WebSocket to the studio's session through the proxy, as its member's browser opens one."""
        host = self.session_host(studio)
        return connect(
            f"ws://{host}/api/kernels/k/channels",
            address=("127.0.0.1", self.session_port),
            additional_headers={"Cookie": f"studios-session={studio['session_cookie']}"},
            origin=f"http://{host}",
        )

    def shows_avatar(self, studio):
        """Whether the studio list shows the member as connected."""
        page = self.get(studio["list_path"], studio)
        assert page.status_code == 200, page.text
        return f"{studio['member']}, connected since" in page.text

    def log(self):
        return self.log_file.read_text()

    def stop(self):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def platform(services, tmp_path):
    """The platform, started for this test with both services up (an earlier test may have left one down)."""
    postgres, broker, _, environment = services
    if not postgres.running():
        postgres.start()
    postgres.refuse_tcp(False)
    if not broker.running():
        broker.start()
    served = Platform(environment, tmp_path / "platform.log")
    yield served
    served.stop()


@pytest.fixture
def studio(platform, platform_side):
    """A running studio whose session echoes WebSocket messages, and its member (``platform_side.studio``)."""

    def echo(websocket):
        for message in websocket:
            websocket.send(message)

    session = serve(echo, "127.0.0.1", 0)
    threading.Thread(target=session.serve_forever, daemon=True).start()
    yield platform_side.ask("studio", f"http://127.0.0.1:{session.socket.getsockname()[1]}")
    session.shutdown()
