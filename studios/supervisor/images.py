"""Template images on a local host: pulled from their registry by reference and unpacked once per digest into a
cache folder, whose ``rootfs`` every session of that image then shares as its read-only lower layer.

The reference is resolved to a digest first (``skopeo inspect``), so that a tag moved in the registry gives a new
folder and a session never sees a mix of two images. The image is copied into a temporary OCI layout
(``skopeo copy``), unpacked there (``umoci raw unpack``) and renamed into place only when complete; a lock file per
digest makes concurrent starts of the same image wait for one unpack instead of doing their own.
"""

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# The registries spoken to over plain HTTP: loopback ones (the tests', and a host's own).
LOOPBACK = re.compile(r"^(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?/")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
TOOLS = ("skopeo", "umoci")


class ImageUnavailable(Exception):
    """The image cannot be used; the message says why in words a user can act on (no host paths)."""


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
) -> tuple[str, Path, bool]:
    """The unpacked root filesystem of the image ``reference`` names, from ``cache_dir`` when it is there already;
    ``progress`` is told what is happening. Returns (digest, rootfs folder, whether it was cached)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    progress("resolving")
    digest = resolve(reference)
    folder = cache_dir / digest.replace(":", "-")
    if (folder / "rootfs").is_dir():
        return digest, folder / "rootfs", True
    with open(cache_dir / f"{folder.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another start to unpack {digest[:19]}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "rootfs").is_dir():  # another start unpacked it meanwhile
            return digest, folder / "rootfs", True
        # What a start killed while unpacking left: no one else unpacks this digest while the lock is held.
        for left in cache_dir.glob(f".{folder.name}-*"):
            shutil.rmtree(left, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache_dir))
        try:
            began = time.monotonic()
            progress(f"downloading {digest[:19]}")
            repository = reference.rsplit("@", 1)[0]
            if ":" in repository.rsplit("/", 1)[-1]:
                repository = repository.rsplit(":", 1)[0]
            _skopeo(
                "copy",
                "--quiet",
                *[option.replace("--", "--src-", 1) for option in _transport_options(reference)],
                f"docker://{repository}@{digest}",
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
            (unpacked / "image.json").write_text(json.dumps({"reference": reference, "digest": digest}))
            os.rename(unpacked, folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return digest, folder / "rootfs", False
