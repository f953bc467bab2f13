"""Checkpoints of real sessions: what survives a stop, a SIGKILL, a corrupt store, and a clone."""

import asyncio
import os
import signal
from pathlib import Path

import pytest

from checkpoints.models import Checkpoint
from studios import lifecycle
from studios.models import Role, StudioStatus
from studios.tasks import checkpoint_session, reconcile_sessions

from .factories import make_dataset, make_member, make_studio, make_workspace
from .live import Browser, execute, make_wheel, pid_alive, run, wait_for_status, wait_until
from .test_unfinished_saves import CUT_SHORT_SAVE


class Files:
    """A user's files in the session's folder, through JupyterLab's contents API behind the proxy."""

    def __init__(self, platform, studio, user):
        self.session = Browser(platform, user).session(studio)
        self.xsrf = self.session.xsrf()

    def write(self, name, text):
        response = self.session.http.put(
            f"/api/contents/{name}",
            json={"type": "file", "format": "text", "content": text},
            headers={"X-XSRFToken": self.xsrf},
        )
        assert response.status_code in (200, 201), response.text

    def read(self, name):
        response = self.session.http.get(f"/api/contents/{name}")
        return response.json()["content"] if response.status_code == 200 else None


@pytest.fixture
def world(live_platform, tmp_path):
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, name="keeper", author=maintainer, cpus=1, memory_mb=1024)
    return live_platform, studio, maintainer


def start(platform, studio, user):
    lifecycle.start_studio(user, studio)
    return wait_for_status(studio, StudioStatus.RUNNING)


def stop(studio, user):
    lifecycle.stop_studio(user, studio)
    return wait_for_status(studio, StudioStatus.STOPPED, timeout=90)


def test_installed_package_and_config_survive_a_restart(world, tmp_path):
    platform, studio, user = world
    # The wheel reaches the session as a dataset (data/ below the IDE's folder): nothing of the host's outside its
    # image is in sight of a container.
    (tmp_path / "packages").mkdir()
    wheel = f"data/packages/{make_wheel(tmp_path / 'packages').name}"
    studio.datasets.set([make_dataset(studio.workspace, "packages", str(tmp_path / "packages"))])
    studio = start(platform, studio, user)
    browser = Browser(platform, user)
    installed = asyncio.run(
        execute(
            platform,
            browser,
            studio,
            "import subprocess, sys, pathlib\n"
            f"r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '{wheel}'], capture_output=True, text=True)\n"
            "cfg = pathlib.Path.home() / '.config' / 'tool.toml'\n"
            "cfg.parent.mkdir(parents=True, exist_ok=True); cfg.write_text('threads = 8\\n')\n"
            "print(r.returncode)",
        )
    )
    assert installed.strip() == "0"
    stop(studio, user)
    first = Checkpoint.objects.get(studio=studio, name="keeper_1")
    assert first.state == Checkpoint.State.FINALIZED and first.size_bytes > 0

    studio = start(platform, studio, user)
    assert "Restoring checkpoint" in [step["name"] for step in studio.startup_steps]
    printed = asyncio.run(
        execute(
            platform,
            Browser(platform, user),
            studio,
            "import greeting, pathlib; print(greeting.hello(), (pathlib.Path.home() / '.config/tool.toml').read_text().strip())",
        )
    )
    assert printed.strip() == "hello from a checkpoint threads = 8"
    assert studio.session.checkpoint.name == "keeper_2"
    stop(studio, user)


def test_a_killed_session_loses_only_what_changed_since_its_last_checkpoint(world):
    platform, studio, user = world
    studio = start(platform, studio, user)
    files = Files(platform, studio, user)
    files.write("notes.txt", "saved\n")
    checkpoint_session(studio.session_id)
    files.write("notes.txt", "changed after the checkpoint\n")
    files.write("later.txt", "never saved\n")
    pid = studio.session.handle["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, f"the killed session's process {pid} to end")
    reconcile_sessions()
    studio.refresh_from_db()
    assert studio.status == StudioStatus.ERRORED
    assert Checkpoint.objects.get(studio=studio, name="keeper_1").state == Checkpoint.State.INTERIM

    studio = start(platform, studio, user)
    files = Files(platform, studio, user)
    assert files.read("notes.txt") == "saved\n"
    assert files.read("later.txt") is None
    stop(studio, user)


def test_a_save_cut_short_comes_back_as_last_saved(world):
    """JupyterLab's server killed halfway through rewriting a file, in the session: whether the session then stops,
    or ends without a final checkpoint, the file comes back as last saved, never half written. (A notebook Jupyter would
    recover itself as it opens it next, from the copy its save left; a table or a script it would not.)"""
    platform, studio, user = world
    saved = "sample\tcondition\nS1\tcontrol\nS2\ttreated\n"
    cut_short = (
        f"import subprocess, sys\nsave = {CUT_SHORT_SAVE!r}\n"
        "print(subprocess.run([sys.executable, '-c', save, '/workspace/samples.tsv', 'rewrite']).returncode)"
    )
    copies_left = "import os; print([name for name in os.listdir('/workspace') if name.startswith('.~')])"

    studio = start(platform, studio, user)
    files = Files(platform, studio, user)
    files.write("samples.tsv", saved)
    assert run(platform, studio, user, cut_short) == "-9"
    assert files.read("samples.tsv") != saved
    # The session ends with only this (interim) checkpoint of the file as the save left it.
    checkpoint_session(studio.session_id)
    pid = studio.session.handle["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, f"the killed session's process {pid} to end")
    reconcile_sessions()

    studio = start(platform, studio, user)
    files = Files(platform, studio, user)
    assert files.read("samples.tsv") == saved
    assert run(platform, studio, user, copies_left) == "[]"
    # Now a stop: the final checkpoint is taken once the IDE has stopped.
    assert run(platform, studio, user, cut_short) == "-9"
    stop(studio, user)

    studio = start(platform, studio, user)
    files = Files(platform, studio, user)
    assert files.read("samples.tsv") == saved
    assert run(platform, studio, user, copies_left) == "[]"
    stop(studio, user)


def test_a_corrupt_checkpoint_fails_the_start_and_is_marked_invalid(world, tmp_path):
    platform, studio, user = world
    studio = start(platform, studio, user)
    Files(platform, studio, user).write("results.csv", "a,b\n1,2\n" * 1000)
    stop(studio, user)
    for chunk in (tmp_path / "work/.studios/checkpoints/objects").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage")
    studio = lifecycle.start_studio(user, studio)
    wait_for_status(studio, StudioStatus.ERRORED, timeout=60)
    assert studio.status_reason.startswith("Checkpoint keeper_1 cannot be restored")
    assert Checkpoint.objects.get(studio=studio, name="keeper_1").state == Checkpoint.State.INVALID
    # Nothing of the failed start is left mounted (its writable layer, in a container).
    assert f"/sessions/studio-{studio.pk}/" not in Path("/proc/self/mounts").read_text()


def test_checkpoints_on_an_s3_work_directory(live_platform, moto_s3):
    s3 = moto_s3
    s3.create_bucket(Bucket="lab-work")
    workspace = make_workspace(work_dir="s3://lab-work/studios")
    user = make_member(workspace, Role.MAINTAIN)
    studio = make_studio(workspace, name="cloudy", author=user, cpus=1, memory_mb=1024)
    studio = start(live_platform, studio, user)
    Files(live_platform, studio, user).write("model.txt", "trained\n")
    stop(studio, user)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lab-work")["Contents"]]
    assert any(k.startswith("studios/.studios/checkpoints/objects/") for k in keys)
    assert any(k.startswith("studios/.studios/checkpoints/manifests/") for k in keys)
    studio = start(live_platform, studio, user)
    assert Files(live_platform, studio, user).read("model.txt") == "trained\n"
    stop(studio, user)


def test_a_clone_and_its_parent_never_change_each_other(world):
    platform, parent, user = world
    parent = start(platform, parent, user)
    Files(platform, parent, user).write("shared.txt", "from the parent\n")
    stop(parent, user)
    source = Checkpoint.objects.get(studio=parent, name="keeper_1")

    clone = lifecycle.start_as_new(user, source, name="keeper-clone", cpus=1, memory_mb=1024)
    assert clone.description == ""  # not made up from the parent's name
    clone = wait_for_status(clone, StudioStatus.RUNNING)
    assert Files(platform, clone, user).read("shared.txt") == "from the parent\n"
    assert [c.name for c in clone.checkpoints.filter(copied_from__isnull=False)] == ["keeper_1"]
    Files(platform, clone, user).write("shared.txt", "changed by the clone\n")
    stop(clone, user)

    parent = start(platform, parent, user)
    files = Files(platform, parent, user)
    assert files.read("shared.txt") == "from the parent\n"
    files.write("parent-only.txt", "later\n")
    stop(parent, user)

    clone = start(platform, clone, user)
    files = Files(platform, clone, user)
    assert files.read("shared.txt") == "changed by the clone\n"
    assert files.read("parent-only.txt") is None
    stop(clone, user)
