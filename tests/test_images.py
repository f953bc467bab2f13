"""Sessions run from the template images: pulled from the loopback registry by reference, unpacked once per digest,
the container's read-only lower layer; none of the host's files in sight. Needs `make images` (make test runs it)."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from studios import lifecycle
from studios.backends import backend_for
from studios.models import Role, StudioStatus
from studios.supervisor import images, sandbox
from studios.supervisor.supervisor import free_port

from .conftest import end_sessions_left_running
from .factories import make_member, make_studio, make_workspace
from .live import run, wait_for_status, wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TAGS = json.loads((PROJECT_ROOT / "images/tags.json").read_text())

pytestmark = pytest.mark.skipif(bool(sandbox.isolation_problem()), reason=sandbox.isolation_problem())


@pytest.fixture(scope="session")
def registry(loopback_registry):
    """The loopback registry, with the JupyterLab image in it."""
    reference = settings.STUDIOS_TEMPLATE_IMAGES["jupyterlab"]
    try:
        images.resolve(reference)
    except images.ImageUnavailable as error:
        pytest.fail(f"{reference}: {error}; run `make images` first")
    return settings.STUDIOS_REGISTRY


@pytest.fixture
def world(registry, live_platform, tmp_path):
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    return live_platform, workspace, make_member(workspace, Role.MAINTAIN)


def start(workspace, user, image=None):
    environment = workspace.compute_environments.get()
    if image:
        environment.images = {"jupyterlab": image}
        environment.save()
    studio = make_studio(workspace, author=user, cpus=1, memory_mb=2048)
    lifecycle.start_studio(user, studio)
    return studio


def step(studio, name):
    return next(step for step in studio.session.steps if step["name"] == name)


HOST_FILES_PROBE = """
import hashlib, json, os, pandas, sklearn
def digest(path):
    try:
        return hashlib.sha256(open(path, 'rb').read()).hexdigest()
    except OSError as error:
        return error.strerror
print(json.dumps({
    'shadow': digest('/etc/shadow'),
    'exists': {path: os.path.exists(path) for path in PATHS},
    'packages': [pandas.__version__, sklearn.__version__],
}))
"""


def test_a_session_runs_from_the_jupyterlab_image_and_sees_none_of_the_hosts_files(world):
    platform, workspace, user = world
    studio = wait_for_status(start(workspace, user), StudioStatus.RUNNING)
    pulled = step(studio, "Pulling image")
    assert pulled["state"] == "succeeded" and settings.STUDIOS_TEMPLATE_IMAGES["jupyterlab"] in pulled["message"]
    assert studio.template_version == TAGS["jupyterlab"]
    host_only = [
        "/var/lib/postgresql",
        "/etc/postgresql",
        str(PROJECT_ROOT),
        str(settings.DATA_DIR),
        str(workspace.compute_environments.get().work_dir),
        "/root/.cache/pip",
    ]
    printed = run(platform, studio, user, f"PATHS = {host_only!r}\n{HOST_FILES_PROBE}")
    seen = json.loads(printed)
    rootfs = images.pull(settings.STUDIOS_TEMPLATE_IMAGES["jupyterlab"], settings.STUDIOS_IMAGE_CACHE_DIR)[1]
    image_shadow = subprocess.run(["sha256sum", rootfs / "etc/shadow"], capture_output=True, text=True, check=True)
    host_shadow = subprocess.run(["sha256sum", "/etc/shadow"], capture_output=True, text=True, check=True)
    assert seen["shadow"] == image_shadow.stdout.split()[0] != host_shadow.stdout.split()[0]
    assert seen["exists"] == dict.fromkeys(host_only, False)
    assert all(seen["packages"])
    # The image's root filesystem is the shared, read-only lower layer: never copied into the session's folder.
    supervisor_mounts = Path(f"/proc/{studio.session.handle['pid']}/mounts").read_text()
    assert f"lowerdir={rootfs}," in supervisor_mounts


def unusable(world, image, reason):
    """Start a studio from ``image``: errored with ``reason``, no host path in it, nothing left on the host."""
    _, workspace, user = world
    studio = wait_for_status(start(workspace, user, image), StudioStatus.ERRORED)
    assert reason in studio.status_reason, studio.status_reason
    assert image in studio.status_reason and str(settings.DATA_DIR) not in studio.status_reason
    assert step(studio, "Pulling image")["state"] == "errored"
    handle = studio.session.handle
    assert backend_for(studio.compute_environment).leftovers(handle) == []
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    assert not [point for point in mounted if point.startswith(str(settings.DATA_DIR))]
    end_sessions_left_running()


def test_a_bad_image_reference_errors_the_studio_with_a_reason_and_leaves_nothing(world, registry):
    unusable(world, f"{registry}/studios/no-such-template:1", "the registry has no such image")


def test_a_registry_that_does_not_answer_errors_the_studio_with_a_reason(world):
    unusable(world, f"127.0.0.1:{free_port()}/studios/jupyterlab:1", "its registry does not answer")


def test_an_image_without_the_supervisors_python_errors_the_studio_with_a_reason(world, registry):
    """The Debian base, pushed as if it were a template's image."""
    reference = f"{registry}/studios/not-a-template:1"
    base = "containers-storage:localhost/studios/debian:bookworm"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", base, f"docker://{reference}"], check=True)
    unusable(world, reference, "is not a Studios jupyterlab image: it has no /opt/studios/venv/bin/python")


def test_the_add_form_shows_each_templates_image_tag_as_its_version(db, client, registry):
    workspace = make_workspace()
    client.force_login(make_member(workspace, Role.MAINTAIN))
    page = client.get(reverse("studio_add", args=[workspace.organization.slug, workspace.slug])).content.decode()
    assert f"JupyterLab {TAGS['jupyterlab']}: available" in page
    assert f'RStudio Server {TAGS["rstudio"]}: <span class="note">unavailable — Its image' in page


def test_concurrent_starts_of_one_image_unpack_it_once(registry, tmp_path):
    reference = settings.STUDIOS_TEMPLATE_IMAGES["jupyterlab"]
    results, messages = [], []
    # What a start killed halfway through an unpack leaves: removed by the next unpack of the digest.
    (tmp_path / "cache" / f".{images.resolve(reference).replace(':', '-')}-killed" / "unpacked").mkdir(parents=True)

    def pull():
        results.append(images.pull(reference, tmp_path / "cache", progress=messages.append))

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(cached for _, _, cached in results) == [False, True]
    assert results[0][1] == results[1][1] and (results[0][1] / "opt/studios/venv/bin/python").is_symlink()
    assert sum(message.startswith("unpacking") for message in messages) == 1
    assert [path.name for path in (tmp_path / "cache").iterdir() if not path.name.endswith(".lock")] == [
        results[0][0].replace(":", "-")
    ]


def unpacked(cache, reference, digest, pulled):
    """An image as ``images.pull`` leaves it in ``cache``, last pulled at ``pulled`` (seconds since the epoch)."""
    folder = cache / digest.replace(":", "-")
    (folder / "rootfs/etc").mkdir(parents=True)
    (folder / "image.json").write_text(json.dumps({"reference": reference, "digest": digest, "config": {}}))
    os.utime(folder / "image.json", (pulled, pulled))
    return folder


def test_superseded_unpacked_images_are_removed_once_no_session_runs_from_them(tmp_path):
    reference = "127.0.0.1:5000/studios/jupyterlab:4"
    digests = [f"sha256:{str(n) * 64}" for n in range(1, 4)]
    old, running, latest = (unpacked(tmp_path, reference, digest, 1000 + n) for n, digest in enumerate(digests))
    other = unpacked(tmp_path, "127.0.0.1:5000/studios/vscode:1", f"sha256:{'9' * 64}", 900)
    # A session's host holds its image's lock shared for as long as it runs (pull(hold=True)).
    session = subprocess.Popen(["flock", "--shared", "--no-fork", tmp_path / f"{running.name}.lock", "sleep", "600"])
    try:
        wait_until(
            lambda: subprocess.run(["flock", "-n", tmp_path / f"{running.name}.lock", "true"]).returncode,
            10,
            "the session to hold its image",
        )
        assert images.collect(tmp_path) == [digests[0]]
        assert [folder.exists() for folder in (old, running, latest, other)] == [False, True, True, True]
    finally:
        session.kill()
        session.wait()
    assert images.collect(tmp_path) == [digests[1]]
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")) == sorted(
        [latest.name, other.name]
    )


def test_a_tag_pushed_again_leaves_nothing_of_its_former_image_in_the_loopback_registry_once_collected(tmp_path):
    """What `make images` does after its pushes (images/registry.sh collect), on a loopback registry of its own."""
    environ = dict(os.environ, STUDIOS_REGISTRY=f"127.0.0.1:{free_port()}", STUDIOS_REGISTRY_DIR=str(tmp_path / "r"))
    registry = PROJECT_ROOT / "images/registry.sh"
    subprocess.run([registry], env=environ, check=True, capture_output=True)
    reference = f"{environ['STUDIOS_REGISTRY']}/studios/probe:1"
    layout = tmp_path / "layout"
    subprocess.run(["umoci", "init", "--layout", layout], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:probe"], check=True)
    pushed = []
    for content in ("first", "second"):
        (tmp_path / "file").write_text(content * 1000)
        subprocess.run(["umoci", "insert", "--image", f"{layout}:probe", tmp_path / "file", "/file"], check=True)
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:probe", f"docker://{reference}"],
            check=True,
        )
        pushed.append(images.resolve(reference))
    blobs = tmp_path / "r/storage/docker/registry/v2/blobs/sha256"
    before = {path.name for path in blobs.glob("*/*")}
    try:
        subprocess.run([registry, "collect"], env=environ, check=True, capture_output=True)
    finally:
        os.kill(int((tmp_path / "r/registry.pid").read_text()), 15)
    after = {path.name for path in blobs.glob("*/*")}
    assert pushed[0].removeprefix("sha256:") in before - after  # the former manifest, and the layer only it had
    assert pushed[1].removeprefix("sha256:") in after and len(before - after) >= 2
