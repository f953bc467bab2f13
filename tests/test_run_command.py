"""The README's run command: one command that brings up the web server, the session proxy, the worker and beat, and
takes them down."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from .live import wait_until

ROOT = Path(__file__).resolve().parents[1]


def children_of(pid):
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def serves(url, status=200, **headers):
    try:
        return httpx.get(url, headers=headers).status_code == status
    except httpx.TransportError:
        return False


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_runstudios_serves_the_demo_and_stops_its_worker_on_sigterm(tmp_path):
    port, session_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["STUDIOS_DATA_DIR"] = str(tmp_path)
    env["STUDIOS_METRICS_TOKEN"] = "scrape"
    subprocess.run([sys.executable, "manage.py", "prepare"], cwd=ROOT, env=env, check=True, timeout=60)  # as make run
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runstudios", "--port", str(port), "--session-port", str(session_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: serves(f"http://127.0.0.1:{port}/accounts/login/"), 90, "the login page", interval=0.3)
        for _ in range(5):  # as a page polling
            assert httpx.get(f"http://127.0.0.1:{port}/accounts/login/?poll").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/no-such-page/").status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer scrape"})
        assert metrics.status_code == 200 and 'studios_studios{status="stopped",template="jupyterlab"}' in metrics.text
        assert any((tmp_path / "metrics").iterdir()), "the processes write their counts where a scrape adds them up"
        # Session origins on the session proxy's port, which sends browsers to the platform's for a ticket; each port
        # refuses the other's hosts.
        sessions = f"http://127.0.0.1:{session_port}/lab"
        wait_until(lambda: serves(sessions, 302, Host=f"s1.localhost:{session_port}"), 30, "the session proxy", 0.3)
        answer = httpx.get(sessions, headers={"Host": f"s1.localhost:{session_port}"})
        assert answer.status_code == 302
        assert answer.headers["location"].startswith(f"http://localhost:{port}/studios/1/ticket/?next=%2Flab&")
        assert httpx.get(sessions, headers={"Host": f"localhost:{port}"}).status_code == 400
        platform = f"http://127.0.0.1:{port}/accounts/login/"
        assert httpx.get(platform, headers={"Host": f"s1.localhost:{session_port}"}).status_code == 400
        children = children_of(process.pid)
        assert len(children) == 3, "the web server, the session proxy and the Celery worker are the command's children"
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
        assert "password: " in output
        for child in children:
            assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    finally:
        process.kill()
    # The access log keeps what went wrong, not every poll; the worker (root, where sessions need it) does not warn.
    assert '"GET /no-such-page/ HTTP/1.1" 404' in output
    assert "/accounts/login/?poll" not in output
    assert "superuser privileges" not in output
