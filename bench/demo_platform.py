"""The whole product (``manage.py runstudios``) on embedded defaults in a temporary data dir, and its demo
users over HTTP: what the benchmarks measure against."""

import contextlib
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def demo_platform(root=ROOT, **settings):
    """Serve the product (the checkout at ``root``) with its demo data, ``settings`` added to its environment
    (embedded services unless they name DATABASE_URL or REDIS_URL); yields (base URL, the demo users' password,
    the environment)."""
    data_dir = tempfile.mkdtemp(prefix="studios-bench-")
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        STUDIOS_DATA_DIR=data_dir,
        DJANGO_SETTINGS_MODULE="studios_project.settings",
        STUDIOS_SESSION_PORT=str(free_port()),  # where runstudios serves session origins (when it has a port for them)
        **settings,
    )
    subprocess.run([sys.executable, "manage.py", "prepare"], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(Path(data_dir) / "platform.log", "w") as log:  # the server keeps its own descriptor
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runstudios", "--port", str(port)], cwd=root, env=env, stdout=log, stderr=log
        )
    try:
        base = f"http://localhost:{port}"  # where session origins (s<id>.localhost) send browsers for a ticket
        while True:
            try:
                httpx.get(f"{base}/accounts/login/")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base, (Path(data_dir) / "demo_password").read_text().strip(), env
    finally:
        # Not SIGTERM: uvicorn re-raises it once it has shut down, which kills runstudios before it stops its
        # Celery worker. On SIGINT (Ctrl+C) it stops the worker.
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def setup_django(env):
    """Django set up on the platform's own database, to read what the pages do not show."""
    sys.path.insert(0, str(ROOT))
    # Playwright's sync API runs an event loop in this thread; these reads are synchronous all the same.
    os.environ.update(env, DJANGO_ALLOW_ASYNC_UNSAFE="true")
    import django

    django.setup()


class DemoUser:
    """A demo user logged in over HTTP, posting forms as the pages do."""

    def __init__(self, base, username, password):
        self.http = httpx.Client(base_url=base, timeout=60)
        page = self.http.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        credentials = {"username": username, "password": password, "csrfmiddlewaretoken": token}
        self.http.post("/accounts/login/", data=credentials)

    def session(self, studio_id):
        """A client on the studio's session origin, signed in there by the ticket round trip. (It connects to the
        loopback address and names the origin in Host: Python does not resolve *.localhost.) The origin, port
        included, is where the platform's ticket page sends this browser."""
        state = secrets.token_urlsafe(32)
        browser = hashlib.sha256(state.encode()).hexdigest()
        ticket = urlsplit(self.http.get(f"/studios/{studio_id}/ticket/?next=/&browser={browser}").headers["location"])
        session = httpx.Client(base_url=f"http://127.0.0.1:{ticket.port}", headers={"Host": ticket.netloc}, timeout=60)
        session.cookies.set("studios-state", state)
        session.get(f"{ticket.path}?{ticket.query}")
        return session

    def post(self, path, data=None):
        return self.http.post(path, data={"csrfmiddlewaretoken": self.http.cookies.get("csrftoken"), **(data or {})})

    def add_studio(self, name, template="jupyterlab", environment=1):
        """A JupyterLab studio on the demo workspace's compute environment ``environment`` (its local one by
        default); its id."""
        added = self.post(
            "/w/demo/analysis/studios/add/",
            {
                "name": name,
                "template": template,
                "compute_environment": str(environment),
                "cpus": "1",
                "memory_mb": "2048",
            },
        )
        return int(re.search(r"/studios/(\d+)/", added.headers["location"]).group(1))

    def status(self, studio_id):
        partial = self.http.get(f"/studios/{studio_id}/", headers={"HX-Request": "true"}).text
        return re.search(r'id="status-badge">(\w+)<', partial).group(1)

    def wait_for(self, studio_id, wanted):
        while (current := self.status(studio_id)) != wanted:
            if current == "errored":
                raise SystemExit("studio errored")
            time.sleep(0.05)
