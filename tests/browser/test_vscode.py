"""VS Code (code-server) in headless Chromium, through the platform's proxy and the session's gate."""

import re
import shutil

import pytest
from playwright.sync_api import expect

from studios import lifecycle
from studios.models import Role, StudioStatus
from studios.supervisor import sandbox

from ..factories import make_dataset, make_member, make_studio, make_workspace
from ..test_sessions import wait_for_status

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem()),
    pytest.mark.skipif(shutil.which("code-server") is None, reason="code-server is not installed"),
]


def test_a_member_works_in_vscode_on_the_sessions_folder(live_platform, open_page, tmp_path):
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    user = make_member(workspace, Role.CONNECT)
    maintainer = make_member(workspace, Role.MAINTAIN)
    (tmp_path / "reads").mkdir()
    (tmp_path / "reads/sample.fastq").write_text("@r1\nACGT\n")
    reads = make_dataset(workspace, "reads", str(tmp_path / "reads"))
    studio = make_studio(workspace, author=maintainer, template="vscode", cpus=2, memory_mb=2048, datasets=[reads])
    lifecycle.start_studio(maintainer, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)

    page = open_page(user)
    page.goto(live_platform.session_origin(studio) + "/")
    # The workbench reads the session's files over its WebSocket: the explorer lists the mounted dataset.
    expect(page.locator(".monaco-workbench")).to_be_visible(timeout=60_000)
    data = page.get_by_role("treeitem", name=re.compile(r"^data")).first  # "data", then "data/reads" once open
    expect(data).to_be_visible(timeout=60_000)
    data.click()
    page.get_by_role("treeitem", name="sample.fastq").click()
    expect(page.locator(".monaco-editor .view-lines")).to_contain_text("ACGT")
    assert page.url == f"{live_platform.session_origin(studio)}/?folder=/workspace"

    lifecycle.stop_studio(maintainer, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_what_a_vscode_terminal_makes_survives_a_restart(live_platform, open_page, tmp_path):
    """The terminal runs in the session (node-pty, over the WebSocket); the files it makes are in the next
    start's checkpoint."""
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, author=maintainer, template="vscode", cpus=2, memory_mb=2048)
    lifecycle.start_studio(maintainer, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)

    page = open_page(maintainer)
    page.goto(live_platform.session_origin(studio) + "/")
    expect(page.get_by_role("tree", name="Files Explorer")).to_be_visible(timeout=60_000)
    # A new profile opens its walkthrough, which takes the keyboard focus when it arrives: wait for it first, or the
    # typing below can land in the walkthrough instead of the terminal (seen on a loaded machine).
    expect(page.get_by_role("tab", name=re.compile("^Walkthrough"))).to_be_visible(timeout=60_000)
    expect(page.get_by_role("heading", name="Walkthroughs")).to_be_visible()
    expect(page.get_by_text("Deploy code-server for your team")).to_have_count(0)  # no advertisement for Coder
    page.get_by_role("checkbox", name=re.compile("Toggle Panel")).click()  # the panel opens on a new terminal
    terminal = page.locator(".xterm")
    expect(terminal).to_be_visible(timeout=30_000)
    terminal.click()
    expect(page.locator(".xterm-helper-textarea")).to_be_focused()
    page.keyboard.type("echo kept > /workspace/notes.txt\n")
    expect(page.get_by_role("treeitem", name="notes.txt")).to_be_visible(timeout=30_000)

    lifecycle.stop_studio(maintainer, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
    lifecycle.start_studio(maintainer, studio)
    studio = wait_for_status(studio, StudioStatus.RUNNING)
    page = open_page(maintainer)
    page.goto(live_platform.session_origin(studio) + "/")
    page.get_by_role("treeitem", name="notes.txt").click(timeout=60_000)
    expect(page.locator(".monaco-editor .view-lines")).to_contain_text("kept")
    lifecycle.stop_studio(maintainer, studio)
    wait_for_status(studio, StudioStatus.STOPPED, timeout=90)
