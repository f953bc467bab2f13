"""Attack 2: a hostile checkpoint manifest writes on the host as root.

Whatever a session leaves behind is untrusted input, its checkpoints' manifests first: a session that can write
to the checkpoint store (attack 5) or forge a checkpoint report can make the next start restore any manifest it
likes, and today the restore runs on the host, as root, before the container exists. Restore must write only
beneath the layer, never follow a symlink, create no device, and refuse such a checkpoint as invalid.
"""

import hashlib
import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest
import zstandard
from django.utils import timezone

from checkpoints import snapshot
from checkpoints.models import Checkpoint
from checkpoints.store import store_for
from studios import lifecycle
from studios.models import StudioStatus

from .conftest import (
    effective_uid_as_nobody,
    files_exposed,
    remember,
    requires_isolation,
    settled,
    setuid_files_exposed,
)

pytestmark = requires_isolation

MTIME_NS = 1_700_000_000_000_000_000


def stored_file(store, path, content, mode=0o644):
    """A manifest entry for a regular file at ``path`` whose content is really in the store (so that it passes
    every hash check)."""
    compressed = zstandard.ZstdCompressor(level=3).compress(content)
    digest = hashlib.sha256(content).hexdigest()
    store.put(snapshot.object_key(digest), compressed)
    return {
        "path": path,
        "type": "file",
        "mode": mode,
        "mtime_ns": MTIME_NS,
        "size": len(content),
        "chunks": [[digest, snapshot.object_key(digest), 0, len(compressed)]],
    }


def plant_checkpoint(world, studio, entries):
    """Put a manifest in the compute environment's store as the format has it (zstd-compressed JSON, version 2)
    and record it as the studio's latest finalized checkpoint, which its next start restores."""
    encoded = zstandard.ZstdCompressor(level=3).compress(json.dumps({"version": 2, "entries": entries}).encode())
    key = f"{snapshot.MANIFESTS}{uuid.uuid4().hex}.json.zst"
    store_for(str(world.work_dir)).put(key, encoded)
    return Checkpoint.objects.create(
        studio=studio,
        name=f"{studio.name}_1",
        state=Checkpoint.State.FINALIZED,
        saved=timezone.now(),
        manifest_key=key,
        manifest_sha256=hashlib.sha256(encoded).hexdigest(),
        size_bytes=0,
    )


def start_from_planted(world, entries):
    studio = world.studio()
    checkpoint = plant_checkpoint(world, studio, entries)
    lifecycle.start_studio(world.maintainer, studio)
    return remember(world, settled(studio)), checkpoint


def device_nodes(studio):
    """Character and block devices the session's layer exposes on the host, other than overlay whiteouts (0:0)."""
    return [
        f"{path} ({os.major(info.st_rdev)}:{os.minor(info.st_rdev)})"
        for path, info in files_exposed(studio, relative_paths=["null"])
        if (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)) and info.st_rdev != 0
    ]


def absolute_path(store, outside):
    return [stored_file(store, str(outside / "planted"), b"written by a checkpoint\n")]


def dot_dot_path(store, outside):
    # Enough ".." to climb from wherever the layer is to /, then down to the target.
    return [stored_file(store, "../" * 40 + str(outside / "planted").lstrip("/"), b"written by a checkpoint\n")]


def symlink_then_file(store, outside):
    return [
        {"path": "escape", "type": "link", "target": str(outside), "mode": 0o777, "mtime_ns": MTIME_NS},
        stored_file(store, "escape/planted", b"written through a symlink\n"),
    ]


def character_device(store, outside):
    # The format has no device type (a checkpoint skips the devices it finds), so a hostile manifest says it as it
    # likes: a character device 1:3, with its numbers every way a restore might read them.
    return [
        {
            "path": "null",
            "type": "char",
            "mode": 0o666,
            "mtime_ns": MTIME_NS,
            "rdev": os.makedev(1, 3),
            "major": 1,
            "minor": 3,
            "size": 0,
            "chunks": [],
        }
    ]


@pytest.mark.parametrize(
    "entries",
    [absolute_path, dot_dot_path, symlink_then_file, character_device],
    ids=["an absolute path", "a dot-dot path", "a file inside a symlink to outside", "a character device"],
)
def test_a_hostile_manifest_writes_nothing_outside_its_layer_and_is_marked_invalid(world, tmp_path, entries):
    outside = tmp_path / "outside"
    outside.mkdir()
    studio, checkpoint = start_from_planted(world, entries(store_for(str(world.work_dir)), outside))
    written = sorted(str(path) for path in outside.rglob("*"))
    assert written == [], f"restoring the manifest wrote on the host outside the layer: {written}"
    if studio.status == StudioStatus.RUNNING:
        devices = device_nodes(studio)
        assert devices == [], f"restoring the manifest made device nodes on the host: {devices}"
    assert studio.status == StudioStatus.ERRORED, (
        f"the studio is {studio.status}: its start restored the hostile manifest instead of refusing it"
    )
    checkpoint.refresh_from_db()
    assert checkpoint.state == Checkpoint.State.INVALID, f"the hostile checkpoint is {checkpoint.state}, not invalid"
    assert checkpoint.invalid_reason


def test_a_setuid_root_file_in_a_manifest_gives_no_one_root_on_the_host(world):
    store = store_for(str(world.work_dir))
    entries = [stored_file(store, "suid-id", Path(shutil.which("id")).read_bytes(), mode=0o4755)]
    studio, _ = start_from_planted(world, entries)
    if studio.status != StudioStatus.RUNNING:
        return  # refused: nothing of it is on the host
    copies = setuid_files_exposed(studio, relative_paths=["suid-id"])
    as_nobody = {path: effective_uid_as_nobody(path) for path in copies}
    assert not [path for path, uid in as_nobody.items() if uid == "0"], (
        f"a setuid-root file restored from a manifest runs as root for the user nobody on the host: {as_nobody}"
    )
