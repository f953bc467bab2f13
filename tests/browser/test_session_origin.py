"""The attack of issue 13, in Chromium: a page a connect member plants in a session, opened by an owner who is a
superuser, tries to read the platform and post its admin's user form to make the planter a superuser, and to use
the owner's access to another session. Each studio's session on its own origin makes every attempt fail."""

import json
import threading
from http.server import ThreadingHTTPServer

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from studios import lifecycle
from studios.models import Role, StudioStatus

from ..factories import make_member, make_running, make_studio, make_workspace
from ..live import execute_without_a_loop, wait_for_status
from ..test_proxy import EchoSession

pytestmark = pytest.mark.browser

HOSTILE_PAGE = """<!doctype html><title>Plot</title><h1>A harmless plot</h1>
<script>
(async () => {{
  const result = {{}};
  async function attempt(name, url, options) {{
    try {{
      const answer = await fetch(url, options);
      result[name] = `answered ${{answer.status}}: ${{(await answer.text()).slice(0, 200)}}`;
    }} catch (error) {{
      result[name] = `failed: ${{error.name}}`;
    }}
  }}
  const form = "{platform}/admin/auth/user/{victim}/change/";
  await attempt("read the platform", form, {{credentials: "include"}});
  const body = new URLSearchParams({{username: "mallory", is_active: "on", is_staff: "on", is_superuser: "on"}});
  await attempt("post the admin form", form, {{method: "POST", credentials: "include", body}});
  await attempt("read another session", "{other}/api/contents", {{credentials: "include"}});
  await attempt("read its own session", "/api/status", {{}});
  document.body.dataset.result = JSON.stringify(result);
}})();
</script>"""


@pytest.fixture
def sessions(live_platform, tmp_path):
    """A real JupyterLab studio, and another studio whose session is a stub, in the owner's workspace."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoSession)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    owner = make_member(workspace, Role.OWNER, username="olga")
    owner.is_staff = owner.is_superuser = True
    owner.save()
    studio = make_studio(workspace, name="lab", author=owner, cpus=1, memory_mb=1024)
    other = make_running(
        make_studio(workspace, name="other", author=owner), f"http://127.0.0.1:{server.server_address[1]}"
    )
    lifecycle.start_studio(owner, studio)
    yield wait_for_status(studio, StudioStatus.RUNNING), other
    lifecycle.stop_studio(owner, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    server.shutdown()


def test_a_page_planted_in_a_session_cannot_read_or_post_to_the_platform_or_reach_another_session(
    live_platform, sessions, open_page
):
    studio, other = sessions
    if not studio.session.handle.get("container"):
        pytest.skip("sessions here are not isolated: the planted page would be written into the host's JupyterLab")
    mallory = make_member(studio.workspace, Role.CONNECT, username="mallory")
    # Mallory writes the page into JupyterLab's own static folder (in the session's layer), which JupyterLab serves
    # as it is: no sandbox, as the issue found.
    page = HOSTILE_PAGE.format(platform=live_platform.url, victim=mallory.pk, other=live_platform.session_origin(other))
    planted = execute_without_a_loop(
        live_platform,
        mallory,
        studio,
        "import os, sys\nstatic = os.path.join(sys.prefix, 'share', 'jupyter', 'lab', 'static')\n"
        f"open(os.path.join(static, 'plot.html'), 'w').write({page!r})\nprint('planted')",
    )
    assert planted.strip() == "planted"

    olga = open_page(studio.author)
    # Olga has the other session open too: her browser holds its cookie.
    olga.goto(live_platform.session_origin(other) + "/api/status")
    expect(olga.get_by_text('"method": "GET"')).to_be_visible()
    # She opens the planted page's link; the platform sends her back with a ticket; the page runs.
    olga.goto(live_platform.session_origin(studio) + "/static/lab/plot.html")
    expect(olga.get_by_role("heading", name="A harmless plot")).to_be_visible(timeout=30_000)
    assert olga.url == live_platform.session_origin(studio) + "/static/lab/plot.html"
    expect(olga.locator("body[data-result]")).to_have_count(1, timeout=30_000)
    result = json.loads(olga.locator("body").get_attribute("data-result"))

    assert result["read its own session"].startswith("answered 200")  # the script did run
    assert result["read the platform"] == "failed: TypeError"  # the browser keeps the platform's answer from it
    assert result["post the admin form"] == "failed: TypeError"
    assert result["read another session"] == "failed: TypeError"
    mallory = get_user_model().objects.get(pk=mallory.pk)
    assert not mallory.is_superuser and not mallory.is_staff
