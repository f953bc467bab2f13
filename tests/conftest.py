import subprocess
from pathlib import Path

import pytest

from studios.models import Role
from studios.supervisor import sandbox

from .factories import make_member, make_user, make_workspace
from .live import wait_until


@pytest.fixture(scope="session", autouse=True)
def loopback_registry():
    """Isolated local sessions run from the template images in the loopback registry: started again when it is not
    answering (after a reboot); `make images` (which make test runs) built and pushed them."""
    if not sandbox.isolation_problem():
        subprocess.run([Path(__file__).resolve().parents[1] / "images/registry.sh"], check=True)


@pytest.fixture
def workspace(db):
    return make_workspace()


@pytest.fixture
def members(workspace):
    """One user per role, named after the role, plus a non-member called outsider."""
    users = {role: make_member(workspace, role, username=role) for role in Role.values}
    users["outsider"] = make_user("outsider")
    return users


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Demo users are made by the dozen; the production hasher is slow by design."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def eager_tasks(monkeypatch):
    """Celery tasks dispatched by the code under test run at once, in the test."""
    from studios_project.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)
    # ``lifecycle`` queues tasks by name: only registered ones run eagerly (a worker imports them when it starts).
    app.loader.import_default_modules()


class LivePlatform:
    """The product served for real on loopback: the platform and the session proxy under uvicorn, each on a port of
    its own, and a Celery worker.

    Its session origins are ``s<id>.localhost:<session port>``: Chromium resolves them to the loopback address;
    Python clients connect to ``session_url`` and name the session origin in their ``Host`` header
    (``live.SessionClient``)."""

    def __init__(self, url, session_port):
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.session_port = session_port
        self.session_url = f"http://127.0.0.1:{session_port}"

    def session_host(self, studio):
        settings = django_settings()
        return f"{settings.STUDIOS_SESSION_PREFIX}{studio.pk}.{settings.STUDIOS_SESSION_DOMAIN}:{self.session_port}"

    def session_origin(self, studio):
        return f"http://{self.session_host(studio)}"

    def session_cookie(self, user):
        """A logged-in Django session for ``user``, as the browser would hold it."""
        from django.test import Client

        client = Client()
        client.force_login(user)
        return client.cookies[django_settings().SESSION_COOKIE_NAME].value


def django_settings():
    from django.conf import settings

    return settings


def end_sessions_left_running():
    """A failed test may leave sessions (and their containers and mounts) behind: end them, also those whose record
    a test ended without their compute (``lifecycle.fail_studio`` called directly, while the session starts)."""
    from studios.backends import backend_for
    from studios.models import Session

    for session in Session.objects.exclude(handle={}).select_related("studio__compute_environment"):
        backend_for(session.studio.compute_environment).terminate(session.handle, 5)


@pytest.fixture
def live_platform(transactional_db, settings, tmp_path):
    """Serve the platform and the session proxy on free ports with a real Celery worker on the real Redis broker."""
    import asyncio
    import socket
    import threading

    import uvicorn
    from celery.contrib.testing.worker import start_worker
    from channels.layers import channel_layers

    from studios.splice import UVICORN_WS
    from studios_project.asgi import application
    from studios_project.celery import app as celery_app
    from studios_project.session_asgi import application as sessions

    sockets = [socket.socket(), socket.socket()]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    port, session_port = (sock.getsockname()[1] for sock in sockets)
    settings.STUDIOS_PLATFORM_URL = settings.STUDIOS_PUBLIC_URL = f"http://127.0.0.1:{port}"
    settings.STUDIOS_SESSION_PORT = str(session_port)
    settings.STUDIOS_SESSION_DOMAIN, settings.STUDIOS_SESSION_PREFIX = "localhost", "s"
    settings.DATA_DIR = tmp_path / "data"
    settings.STUDIOS_STOP_TIMEOUT_SECONDS = 60
    # The channel layer binds its receiving to one event loop: each test's loop gets a fresh layer, and the platform
    # and the session proxy share it (as their processes share Redis).
    channel_layers.backends.clear()
    servers = [
        uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws=ws))
        for app, ws in ((application, "auto"), (sessions, UVICORN_WS))
    ]

    async def serve():
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets, strict=True)))

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    wait_until(lambda: all(server.started for server in servers), 30, "the platform's servers to start", interval=0.05)
    celery_app.control.purge()
    with start_worker(celery_app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"):
        yield LivePlatform(f"http://127.0.0.1:{port}", session_port)
    end_sessions_left_running()
    for server in servers:
        server.should_exit = True
    thread.join(timeout=10)


def host_address():
    """This host's address on its default route (no packet is sent: connecting a UDP socket picks the route)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1
        return probe.getsockname()[0]


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 (and Batch) as a real HTTP endpoint on this host's network address, where sessions in
    containers reach it as they would reach S3 (they cannot reach the host's loopback); returns its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host_address(), port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_s3(moto_server, monkeypatch):
    """boto3's S3 client on moto's server, which the platform reaches as its own AWS identity (its environment)."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return boto3.client("s3")
