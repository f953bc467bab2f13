"""Snapshot and restore of a writable layer, on a local folder and on S3 (moto's server on loopback)."""

import os
from pathlib import Path

import boto3
import pytest

from checkpoints import snapshot
from checkpoints.store import LocalStore, S3Store


def tree(root):
    """Everything a user would notice about a folder: paths, kinds, contents, modes, link targets."""
    result = {}
    for path in sorted(Path(root).rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            result[relative] = ("link", os.readlink(path))
        elif path.is_dir():
            result[relative] = ("dir", path.stat().st_mode & 0o7777)
        else:
            result[relative] = ("file", path.read_bytes(), path.stat().st_mode & 0o7777)
    return result


@pytest.fixture
def layer(tmp_path):
    root = tmp_path / "layer"
    (root / ".local/lib/python3.11/site-packages/pkg").mkdir(parents=True)
    (root / ".local/lib/python3.11/site-packages/pkg/__init__.py").write_text("VALUE = 1\n")
    (root / ".config").mkdir()
    (root / ".config/settings.toml").write_text("theme = 'dark'\n")
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(9 * 2**20))
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o755)
    (root / "latest").symlink_to(".config/settings.toml")
    (root / "data").mkdir()
    (root / "data/reads.fastq").write_text("@r1\nACGT\n")
    return root


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "work")
    server = request.getfixturevalue("moto_server")
    client = boto3.client("s3", endpoint_url=server, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="lab")
    return S3Store("s3://lab/studios/work", client=client)


def test_restore_recreates_the_layer_except_mounted_data(layer, store, tmp_path):
    saved = snapshot.take(layer, store)
    target = tmp_path / "restored"
    target.mkdir()
    snapshot.restore(target, store, saved.manifest_key, saved.manifest_sha256)
    expected = {path: kind for path, kind in tree(layer).items() if not path.startswith("data")}
    assert tree(target) == expected
    assert saved.size_bytes == sum(p.stat().st_size for p in layer.rglob("*") if p.is_file() and not p.is_symlink() and "data" not in p.parts)


def test_a_checkpoint_costs_what_changed(layer, store):
    first = snapshot.take(layer, store)
    unchanged = snapshot.take(layer, store, previous=first.manifest)
    assert unchanged.stored_bytes < 2048  # only the manifest
    with open(layer / "big.bin", "r+b") as file:
        file.seek(5 * 2**20)
        file.write(os.urandom(2**20))
    changed = snapshot.take(layer, store, previous=unchanged.manifest)
    assert 2**20 < changed.stored_bytes < 4 * 2**20 + 4096  # one 4 MiB chunk of the three
    assert first.stored_bytes > 9 * 2**20


def test_identical_content_is_stored_once(layer, store):
    (layer / "copy.bin").write_bytes((layer / "big.bin").read_bytes())
    saved = snapshot.take(layer, store)
    assert saved.stored_bytes < 9 * 2**20 + 2**20  # the copy added nothing but its manifest entry


@pytest.mark.parametrize("damage", ["flip", "remove"])
def test_a_damaged_chunk_fails_the_restore_with_the_reason(layer, store, tmp_path, damage):
    saved = snapshot.take(layer, store)
    key = sorted(snapshot.referenced_objects(saved.manifest))[0]
    if damage == "remove":
        store.delete(key)
    else:
        import zstandard

        store.put(key, zstandard.ZstdCompressor().compress(b"not what was saved"))
    (tmp_path / "restored").mkdir()
    with pytest.raises(snapshot.CorruptCheckpoint, match=key):
        snapshot.restore(tmp_path / "restored", store, saved.manifest_key, saved.manifest_sha256)


def test_a_manifest_that_does_not_match_its_checksum_is_refused(layer, store, tmp_path):
    saved = snapshot.take(layer, store)
    (tmp_path / "restored").mkdir()
    with pytest.raises(snapshot.CorruptCheckpoint, match="does not match its checksum"):
        snapshot.restore(tmp_path / "restored", store, saved.manifest_key, "0" * 64)
    store.delete(saved.manifest_key)
    with pytest.raises(snapshot.CorruptCheckpoint, match="missing"):
        snapshot.restore(tmp_path / "restored", store, saved.manifest_key, saved.manifest_sha256)


def test_many_small_files_are_packed_into_few_objects(tmp_path, store):
    layer = tmp_path / "site-packages"
    for n in range(2000):
        (layer / f"module{n // 100}").mkdir(parents=True, exist_ok=True)
        (layer / f"module{n // 100}" / f"file{n}.py").write_text(f"VALUE = {n}\n" + "# padding\n" * (n % 50))
    saved = snapshot.take(layer, store)
    assert len(snapshot.referenced_objects(saved.manifest)) <= 2
    restored = tmp_path / "restored"
    restored.mkdir()
    snapshot.restore(restored, store, saved.manifest_key, saved.manifest_sha256)
    assert tree(restored) == tree(layer)


@pytest.fixture
def overlay(tmp_path):
    """A real overlay filesystem: a lower layer with files, and an upper layer the session writes to."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting an overlay needs root")
    lower, upper, work, merged = (tmp_path / name for name in ("lower", "upper", "work", "merged"))
    for folder in (lower / "etc/app", upper, work, merged):
        folder.mkdir(parents=True)
    (lower / "etc/app/default.conf").write_text("lower\n")
    (lower / "etc/app/extra.conf").write_text("lower\n")
    (lower / "etc/motd").write_text("hello\n")

    def mount():
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)

    def unmount():
        subprocess.run(["umount", str(merged)], check=True)

    mount()
    yield merged, upper, work, mount, unmount
    subprocess.run(["umount", str(merged)], check=False)


def test_deletions_in_an_overlay_survive_a_restore(overlay, tmp_path):
    merged, upper, work, mount, unmount = overlay
    (merged / "etc/motd").unlink()
    import shutil

    shutil.rmtree(merged / "etc/app")
    (merged / "etc/app").mkdir()
    (merged / "etc/app/mine.conf").write_text("session\n")
    unmount()
    store = LocalStore(tmp_path / "store")
    saved = snapshot.take(upper, store)
    shutil.rmtree(upper)
    shutil.rmtree(work)
    upper.mkdir()
    work.mkdir()
    snapshot.restore(upper, store, saved.manifest_key, saved.manifest_sha256)
    mount()
    assert not (merged / "etc/motd").exists()
    assert sorted(p.name for p in (merged / "etc/app").iterdir()) == ["mine.conf"]
