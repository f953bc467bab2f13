"""The VS Code and RStudio templates on local compute: found or explained, gated by the session token,
and template root filesystems."""

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets.sync.client
from django.urls import reverse

from studios import lifecycle
from studios.backends import LocalBackend
from studios.models import Role, StudioStatus
from studios.supervisor import sandbox

from .factories import make_member, make_studio, make_workspace
from .live import Browser, run, wait_for_status

needs_isolation = pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem())
needs_code_server = pytest.mark.skipif(
    shutil.which("code-server") is None, reason="code-server is not installed (images/vscode/install-code-server.sh)"
)


def template_rootfs(path, ide_binary=None):
    """A folder laid out like an exported template image: the image's Python (with JupyterLab) at /opt/studios/venv."""
    (path / "opt/studios").mkdir(parents=True)
    (path / "opt/studios/venv").symlink_to(sys.prefix)
    if ide_binary:
        (path / ide_binary).parent.mkdir(parents=True)
        (path / ide_binary).write_text("")
    return path


class TestTemplateAvailability:
    def test_rstudio_is_unavailable_on_the_host_with_how_to_get_it(self, tmp_path):
        problem = LocalBackend(tmp_path).template_problem("rstudio")
        assert "not in Debian's archive" in problem and "STUDIOS_TEMPLATE_ROOTFS" in problem

    @needs_isolation
    def test_a_root_filesystem_with_rstudio_server_offers_it(self, tmp_path):
        rootfs = template_rootfs(tmp_path / "rootfs", "usr/lib/rstudio-server/bin/rserver")
        assert LocalBackend(tmp_path, rootfs={"rstudio": str(rootfs)}).template_problem("rstudio") == ""

    @needs_isolation
    def test_a_root_filesystem_without_the_ide_is_refused(self, tmp_path):
        rootfs = tmp_path / "rootfs"
        rootfs.mkdir()
        problem = LocalBackend(tmp_path, rootfs={"vscode": str(rootfs)}).template_problem("vscode")
        assert problem.startswith("Not installed on this compute environment: install code-server")

    def test_a_root_filesystem_needs_isolation(self, tmp_path):
        rootfs = template_rootfs(tmp_path / "rootfs", "usr/lib/rstudio-server/bin/rserver")
        backend = LocalBackend(tmp_path, isolation="off", rootfs={"rstudio": str(rootfs)})
        assert backend.template_problem("rstudio").startswith(f"Its root filesystem {rootfs} needs isolated sessions")

    def test_the_add_form_shows_rstudio_unavailable_and_the_server_refuses_it(self, client, workspace):
        maintainer = make_member(workspace, Role.MAINTAIN)
        client.force_login(maintainer)
        url = reverse("studio_add", args=[workspace.organization.slug, workspace.slug])
        page = client.get(url).content.decode()
        assert "RStudio Server&#x27;s release package cannot be fetched from this network" in page
        environment = workspace.compute_environments.get()
        form = {"name": "r", "template": "rstudio", "compute_environment": environment.pk, "cpus": 2, "memory_mb": 4096}
        response = client.post(url, form)
        assert response.status_code == 400
        assert "RStudio Server cannot run on local" in response.content.decode()
        assert not workspace.studios.exists()


@needs_isolation
@needs_code_server
@pytest.mark.parametrize("isolation", ["auto", "off"])
def test_vscode_answers_only_through_the_proxy(live_platform, tmp_path, settings, isolation):
    settings.STUDIOS_LOCAL_ISOLATION = isolation
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    user = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, author=user, template="vscode", cpus=2, memory_mb=2048)
    lifecycle.start_studio(user, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    assert bool(studio.session.handle["container"]) is (isolation == "auto")
    browser = Browser(live_platform, user).session(studio)

    health = browser.http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] in ("alive", "expired")
    opened = browser.http.get("/")  # VS Code sends the browser on to the session's folder
    folder = "/workspace" if isolation == "auto" else str(Path(studio.session.handle["session_dir"]) / "home")
    assert opened.status_code == 302 and opened.headers["location"] == f"./?folder={folder}"
    workbench = browser.http.get(f"/?folder={folder}")
    assert workbench.status_code == 200 and "vscode-workbench-web-configuration" in workbench.text

    # The session's own address (reachable by anything on this host) wants the session token.
    endpoint = studio.session.endpoint
    direct = httpx.get(f"{endpoint}/healthz")
    assert direct.status_code == 403
    forged = httpx.get(f"{endpoint}/", headers={"X-Studios-Session-Token": "guess"})
    assert forged.status_code == 403
    with pytest.raises(websockets.InvalidStatus):
        websockets.sync.client.connect(endpoint.replace("http", "ws") + "/")

    lifecycle.stop_studio(user, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


@needs_isolation
def test_a_template_root_filesystem_is_the_sessions_root(live_platform, tmp_path, settings):
    """The lower layer is the configured folder: what only it holds is in the session, JupyterLab runs from it,
    and nothing of the platform's environment reaches the session (this folder borrows the platform's own Python,
    which may have the project installed in it: what runs from an image has no platform code, see test_images)."""
    extra, rootfs = tmp_path / "extra", tmp_path / "rootfs"
    extra.mkdir()
    rootfs.mkdir()
    # A root filesystem folder made of the host's with a few files on top (a real one is an exported image);
    # the files on top sit on a filesystem of their own, as overlayfs refuses layers inside one another.
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(extra)], check=True)
    template_rootfs(extra)
    (extra / "etc").mkdir()
    (extra / "etc/studios-rootfs-marker").write_text("from the template's root filesystem")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={extra}:/", str(rootfs)], check=True)
    try:
        settings.STUDIOS_TEMPLATE_ROOTFS = {"jupyterlab": str(rootfs)}
        workspace = make_workspace(work_dir=str(tmp_path / "work"))
        user = make_member(workspace, Role.MAINTAIN)
        studio = make_studio(workspace, author=user, cpus=1, memory_mb=1024)
        lifecycle.start_studio(user, studio)
        studio = wait_for_status(studio, StudioStatus.RUNNING)
        printed = run(
            live_platform,
            studio,
            user,
            "import os, sys\n"
            "platform = sorted(n for n in os.environ if n.startswith(('STUDIOS', 'DJANGO', 'DATABASE', 'PYTHONPATH')))\n"
            "print(open('/etc/studios-rootfs-marker').read().split()[-2], sys.prefix, platform)",
        )
        assert printed == "root /opt/studios/venv []"
        assert not Path("/etc/studios-rootfs-marker").exists()
        lifecycle.stop_studio(user, studio)
        wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    finally:
        subprocess.run(["umount", "-l", str(rootfs)], check=False)
        subprocess.run(["umount", "-l", str(extra)], check=False)
