"""Template images on a local host: pulled from their registry by reference and unpacked once per digest into a
cache folder, whose ``rootfs`` every session of that image then shares as its read-only lower layer.

The reference is resolved to a digest first (``skopeo inspect``), so that a tag moved in the registry gives a new
folder and a session never sees a mix of two images. The image is copied into a temporary OCI layout
(``skopeo copy``), unpacked there (``umoci raw unpack``) and renamed into place only when complete; a lock file per
digest makes concurrent starts of the same image wait for one unpack instead of doing their own.

A session's host holds a shared lock on its digest's lock file for as long as it runs (``pull(hold=True)``);
``collect`` removes, once a reference has been pulled as another digest, the digests it superseded, each only when
it gets that lock exclusively: no session runs from it, and no start is unpacking or reading it (a start that finds
the folder gone after waiting for the lock unpacks it again). Beside the root
filesystem, ``image.json`` keeps what a container engine reads from the image's configuration to run it (its
entrypoint, command, environment and working directory), for the job container (``supervisor/host.py``).
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The registries spoken to over plain HTTP: loopback ones (the tests', and a host's own).
LOOPBACK = re.compile(r"^(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?/")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
TOOLS = ("skopeo", "umoci")
# The supervisor's Python in every template image, and what each template's IDE must have there: an image without
# them is not a Studios image of the template. The host's own root filesystem (plain processes) has the IDE
# elsewhere: the local backend looks there too.
SUPERVISOR_PYTHON = "/opt/studios/venv/bin/python"
IDE_BINARIES = {
    "jupyterlab": (SUPERVISOR_PYTHON.replace("/python", "/jupyter-lab"),),
    "vscode": ("/usr/local/bin/code-server", "/usr/bin/code-server"),
    "rstudio": ("/usr/lib/rstudio-server/bin/rserver",),
}
RUNTIME_FIELDS = ("Entrypoint", "Cmd", "Env", "WorkingDir")
# The lock files of the digests this process holds (``pull(hold=True)``), open until it exits.
_HELD: list[int] = []


class ImageUnavailable(Exception):
    """The image cannot be used; the message says why in words a user can act on (no host paths)."""


@dataclass(frozen=True)
class Runtime:
    """How the image says it is run (its OCI configuration's ``config``): what a container engine starts."""

    entrypoint: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    working_dir: str = "/"


def runtime(rootfs: str | Path) -> Runtime:
    """The runtime configuration of the image unpacked at ``rootfs`` (by ``pull``)."""
    config: dict[str, Any] = json.loads((Path(rootfs).parent / "image.json").read_text())["config"]
    return Runtime(
        entrypoint=list(config.get("Entrypoint") or []),
        command=list(config.get("Cmd") or []),
        environment=dict(variable.split("=", 1) for variable in config.get("Env") or [] if "=" in variable),
        working_dir=config.get("WorkingDir") or "/",
    )


def missing_for(template: str, rootfs: str | Path) -> list[str]:
    """What a Studios image of ``template`` must have that the one unpacked at ``rootfs`` lacks (a link, as the
    venv's python is, counts: it points inside the image, which the host does not follow)."""
    binaries = IDE_BINARIES.get(template, ())
    wanted = [SUPERVISOR_PYTHON, *binaries[:1]]
    if any(os.path.lexists(Path(rootfs) / path.lstrip("/")) for path in binaries):
        wanted = wanted[:1]
    return [path for path in wanted if not os.path.lexists(Path(rootfs) / path.lstrip("/"))]


def _layout_config(layout: Path) -> dict[str, Any]:
    """The runtime part of the configuration of the one image in the OCI layout at ``layout``."""

    def blob(digest: str) -> Any:
        return json.loads((layout / "blobs" / digest.replace(":", "/")).read_text())

    manifest = blob(json.loads((layout / "index.json").read_text())["manifests"][0]["digest"])
    config = blob(manifest["config"]["digest"]).get("config") or {}
    return {name: config[name] for name in RUNTIME_FIELDS if name in config}


def tools_problem() -> str:
    """Why this host cannot pull images, or "" when it can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"{', '.join(missing)} missing (apt-get install skopeo umoci)" if missing else ""


def _transport_options(reference: str) -> list[str]:
    return ["--tls-verify=false"] if LOOPBACK.match(reference) else []


def _skopeo(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["skopeo", *arguments], capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        raise ImageUnavailable("its registry did not answer in time") from None
    except subprocess.CalledProcessError as error:
        raise ImageUnavailable(_registry_failure(error.stderr)) from None


def _registry_failure(stderr: str) -> str:
    """What skopeo's error means for the user."""
    text = stderr.lower()
    if "connection refused" in text or "no such host" in text or "i/o timeout" in text or "no route" in text:
        return "its registry does not answer"
    if "manifest unknown" in text or "name unknown" in text or "not found" in text:
        return "the registry has no such image (check the image's name and tag)"
    if "invalid reference" in text or "invalid image name" in text or "repository name must" in text:
        return "the reference is not a valid image reference"
    if "unauthorized" in text or "denied" in text:
        return "the registry refused access to it"
    return "the registry could not be read"


def resolve(reference: str, timeout: float = 30) -> str:
    """The digest (sha256:...) that ``reference`` names in its registry now."""
    if not reference or any(character.isspace() for character in reference):
        raise ImageUnavailable("the reference is not a valid image reference")
    found = _skopeo(
        "inspect", *_transport_options(reference), "--format", "{{.Digest}}", f"docker://{reference}", timeout=timeout
    )
    digest = found.stdout.strip()
    if not DIGEST.match(digest):
        raise ImageUnavailable("the registry did not give the image's digest")
    return digest


def pull(
    reference: str,
    cache_dir: str | Path,
    progress: Callable[[str], None] = lambda message: None,
    timeout: float = 30 * 60,
    hold: bool = False,
) -> tuple[str, Path, bool]:
    """The unpacked root filesystem of the image ``reference`` names, from ``cache_dir`` when it is there already;
    ``progress`` is told what is happening. Returns (digest, rootfs folder, whether it was cached). With ``hold``,
    this process keeps the digest from ``collect`` until it exits."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    progress("resolving")
    digest = resolve(reference)
    folder = cache_dir / digest.replace(":", "-")
    lock = os.open(cache_dir / f"{folder.name}.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # waits while the digest is unpacked or collected
        cached = (folder / "rootfs").is_dir() or not _unpack(reference, digest, folder, lock, progress, timeout)
        fcntl.flock(lock, fcntl.LOCK_SH)
        _describe_unpacked(reference, digest, folder)
        os.utime(folder / "image.json")  # when the reference last named this digest, for ``collect``
    except BaseException:
        os.close(lock)
        raise
    if hold:
        _HELD.append(lock)
    else:
        os.close(lock)
    if not cached:
        collect(cache_dir)
    return digest, folder / "rootfs", cached


def collect(cache_dir: str | Path) -> list[str]:
    """Remove the unpacked images of ``cache_dir`` that a later pull of their reference superseded and that no one
    uses (see the module's docstring); the digests removed."""
    described = []
    for description in Path(cache_dir).glob("sha256-*/image.json"):
        with contextlib.suppress(OSError, ValueError):
            described.append((description.stat().st_mtime, json.loads(description.read_text()), description.parent))
    latest = {description["reference"]: folder for _, description, folder in sorted(described, key=lambda d: d[0])}
    removed = []
    for _, description, folder in described:
        if latest[description["reference"]] == folder:
            continue
        lock = os.open(folder.parent / f"{folder.name}.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            collected = folder.parent / f".{folder.name}-collected"
            os.rename(folder, collected)
            shutil.rmtree(collected, ignore_errors=True)
            removed.append(description["digest"])
        except BlockingIOError:
            continue  # a session runs from it, or a start is reading it
        finally:
            os.close(lock)
    return removed


def _unpack(
    reference: str, digest: str, folder: Path, lock: int, progress: Callable[[str], None], timeout: float
) -> bool:
    """Download and unpack ``digest`` into ``folder``, holding ``lock`` exclusively, unless another start did;
    whether this one did."""
    cache_dir = folder.parent
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        progress(f"waiting for another start to unpack {digest[:19]}")
        fcntl.flock(lock, fcntl.LOCK_EX)
    if (folder / "rootfs").is_dir():  # another start unpacked it meanwhile
        return False
    # What a start killed while unpacking (or a collection) left: no one else touches the digest meanwhile.
    for left in cache_dir.glob(f".{folder.name}-*"):
        shutil.rmtree(left, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache_dir))
    try:
        began = time.monotonic()
        progress(f"downloading {digest[:19]}")
        _skopeo(
            "copy",
            "--quiet",
            *[option.replace("--", "--src-", 1) for option in _transport_options(reference)],
            f"docker://{_repository(reference)}@{digest}",
            f"oci:{scratch / 'layout'}:image",
            timeout=timeout,
        )
        size = sum(path.stat().st_size for path in (scratch / "layout/blobs").rglob("*") if path.is_file())
        progress(f"unpacking {size / 2**20:.0f} MB (downloaded in {time.monotonic() - began:.1f} s)")
        unpacked = scratch / "unpacked"
        unpacked.mkdir()
        try:
            subprocess.run(
                ["umoci", "raw", "unpack", "--image", f"{scratch / 'layout'}:image", str(unpacked / "rootfs")],
                capture_output=True,
                check=True,
                timeout=timeout,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            raise ImageUnavailable("its layers could not be unpacked on this host") from None
        description = {"reference": reference, "digest": digest, "config": _layout_config(scratch / "layout")}
        (unpacked / "image.json").write_text(json.dumps(description))
        os.rename(unpacked, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return True


def _describe_unpacked(reference: str, digest: str, folder: Path) -> None:
    """An image unpacked before ``image.json`` kept its runtime configuration gets it from the registry."""
    description = json.loads((folder / "image.json").read_text())
    if "config" in description:
        return
    found = _skopeo(
        "inspect", *_transport_options(reference), "--config", f"docker://{_repository(reference)}@{digest}", timeout=30
    )
    config = json.loads(found.stdout).get("config") or {}
    description["config"] = {name: config[name] for name in RUNTIME_FIELDS if name in config}
    scratch = folder / f".image.json-{os.getpid()}"
    scratch.write_text(json.dumps(description))
    os.rename(scratch, folder / "image.json")


def _repository(reference: str) -> str:
    """``reference`` without its tag or digest."""
    repository = reference.rsplit("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    return repository
