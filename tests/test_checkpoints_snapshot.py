"""Snapshot and restore of a writable layer, on a local folder and on S3 (moto's server on loopback)."""

import hashlib
import json
import os
import shutil
import stat
import threading
import uuid
from pathlib import Path

import boto3
import pytest
import zstandard

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
    client = boto3.client(
        "s3", endpoint_url=server, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    client.create_bucket(Bucket="lab")
    return S3Store("s3://lab/studios/work", client=client)


def test_restore_recreates_the_layer_except_mounted_data(layer, store, tmp_path):
    saved = snapshot.take(layer, store)
    target = tmp_path / "restored"
    target.mkdir()
    snapshot.restore(target, store, saved.manifest_key, saved.manifest_sha256)
    expected = {path: kind for path, kind in tree(layer).items() if not path.startswith("data")}
    assert tree(target) == expected
    assert saved.size_bytes == sum(
        p.stat().st_size for p in layer.rglob("*") if p.is_file() and not p.is_symlink() and "data" not in p.parts
    )


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


def text(size, seed):
    """``size`` bytes of varied text that compresses as source code does."""
    words = [f"name{seed}_{n}" for n in range(5000)]
    lines = (f"def {words[n % 5000]}(value):  # {n * 7919 % 104729}\n" for n in range(size // 20 + 1))
    return "".join(lines).encode()[:size]


def restored_from(saved, store, tmp_path):
    target = tmp_path / f"restored-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    snapshot.restore(target, store, saved.manifest_key, saved.manifest_sha256)
    return target


def test_content_that_does_not_compress_is_stored_at_its_size_and_restored(tmp_path, store):
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "model.bin").write_bytes(os.urandom(9 * 2**20 + 12345))  # three chunks, the last one short
    (layer / "archive.zst").write_bytes(zstandard.ZstdCompressor().compress(text(2**21, 1)))  # already compressed
    for n in range(100):  # small random files, as many as a batch's small pieces hold
        (layer / f"key{n}.bin").write_bytes(os.urandom(5000))
    size = sum(p.stat().st_size for p in layer.iterdir())
    saved = snapshot.take(layer, store)
    assert size < saved.stored_bytes < size * 1.001 + 4096  # no bigger than the content and its manifest
    assert tree(restored_from(saved, store, tmp_path)) == tree(layer)


def test_content_that_compresses_is_stored_compressed(tmp_path, store):
    layer = tmp_path / "layer"
    (layer / "src").mkdir(parents=True)
    (layer / "corpus.txt").write_bytes(text(6 * 2**20, 1))
    (layer / "half.bin").write_bytes(os.urandom(2**21) + bytes(2**21))  # random, then zeros
    for n in range(300):
        (layer / f"src/module{n}.py").write_bytes(text(3000 + n * 10, n))
    saved = snapshot.take(layer, store)
    assert saved.stored_bytes < 2**20 + 2**21 + 2**20  # the text to a fraction, the zeros to nothing
    assert tree(restored_from(saved, store, tmp_path)) == tree(layer)


def test_a_mixed_layer_restores_byte_for_byte_with_its_modes(tmp_path, store):
    layer = tmp_path / "layer"
    (layer / "lib/pkg").mkdir(parents=True)
    (layer / "lib/pkg").chmod(0o750)
    (layer / "lib/tool").write_bytes(text(3 * 2**20 + 7, 2))
    (layer / "lib/tool").chmod(0o755)
    (layer / "lib/weights.bin").write_bytes(os.urandom(5 * 2**20 + 1))
    (layer / "lib/readonly.cfg").write_bytes(b"x = 1\n")
    (layer / "lib/readonly.cfg").chmod(0o400)
    for n in range(3000):  # batches of small files, with copies inside a batch and across batches
        content = b"# shared\n" if n % 50 == 0 else text(2000 + n % 2000, n % 40) if n % 3 else os.urandom(700)
        (layer / f"lib/pkg/file{n}.py").write_bytes(content)
        (layer / f"lib/pkg/file{n}.py").chmod(0o600 if n % 2 else 0o644)
    (layer / "lib/pkg/empty").write_bytes(b"")
    (layer / "lib/latest").symlink_to("pkg/file7.py")
    saved = snapshot.take(layer, store)
    assert tree(restored_from(saved, store, tmp_path)) == tree(layer)
    (layer / "lib/pkg/file5.py").write_bytes(b"changed\n")
    (layer / "lib/pkg/new.py").write_bytes(text(10_000, 99))
    again = snapshot.take(layer, store, previous=saved.manifest)
    assert again.stored_bytes - len(store.get(again.manifest_key)) < 16 * 1024  # the two files, compressed
    assert tree(restored_from(again, store, tmp_path)) == tree(layer)


def test_a_checkpoint_saved_in_version_2_still_restores(tmp_path, store):
    """Version 2 appended a frame per small piece to a pack, offsets in the pack; big pieces were objects."""
    compressor = zstandard.ZstdCompressor(level=3)
    small = [b"print('hello')\n", text(5000, 3), os.urandom(3000)]
    big = text(2**20 + 5, 4)
    frames = [compressor.compress(piece) for piece in small]
    pack = f"{snapshot.OBJECTS}packs/{uuid.uuid4().hex}"
    store.put(pack, b"".join(frames))
    store.put(snapshot.object_key(hashlib.sha256(big).hexdigest()), compressor.compress(big))
    entries, offset = [folder("src")], 0
    for number, (piece, frame) in enumerate(zip(small, frames, strict=True)):
        ref = [hashlib.sha256(piece).hexdigest(), pack, offset, len(frame)]
        entries.append(file(f"src/small{number}", ref, size=len(piece), mode=0o640))
        offset += len(frame)
    big_frame = compressor.compress(big)
    big_ref = [hashlib.sha256(big).hexdigest(), snapshot.object_key(hashlib.sha256(big).hexdigest()), 0, len(big_frame)]
    entries.append(file("big", big_ref, size=len(big)))
    key, digest = store_manifest(store, {"version": 2, "entries": entries})
    target = tmp_path / "restored"
    target.mkdir()
    snapshot.restore(target, store, key, digest)
    assert [(target / f"src/small{n}").read_bytes() for n in range(3)] == small
    assert (target / "big").read_bytes() == big
    assert stat.S_IMODE((target / "src/small1").stat().st_mode) == 0o640


def test_content_another_checkpoint_stored_compressed_otherwise_restores(tmp_path, store):
    """An object is named by its content's hash, so a checkpoint that finds it already stored (written by another
    studio's checkpoint, or before a change of compression) refers to it as it is."""
    big = text(3 * 2**20, 5)
    store.put(snapshot.object_key(hashlib.sha256(big).hexdigest()), zstandard.ZstdCompressor(level=19).compress(big))
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "big.txt").write_bytes(big)
    saved = snapshot.take(layer, store)
    assert saved.stored_bytes < 4096  # only the manifest
    assert tree(restored_from(saved, store, tmp_path)) == tree(layer)


@pytest.mark.parametrize("damage", ["reference beyond the pack", "pack claiming a huge size"])
def test_a_hostile_solid_pack_fails_the_restore_and_writes_nothing_outside(tmp_path, damage):
    store = LocalStore(tmp_path / "work")
    piece = b"the session\n"
    pack = f"{snapshot.SOLID}{uuid.uuid4().hex}"
    if damage == "reference beyond the pack":
        store.put(pack, zstandard.ZstdCompressor().compress(piece))
        ref = [hashlib.sha256(piece).hexdigest(), pack, 8, len(piece)]
    else:  # a frame header saying 64 GiB of content, with one raw block
        store.put(pack, b"\x28\xb5\x2f\xfd\xe0" + (2**36).to_bytes(8, "little") + b"\x61\x00\x00" + piece)
        ref = [hashlib.sha256(piece).hexdigest(), pack, 0, len(piece)]
    key, digest = store_manifest(store, {"version": 3, "entries": [file("planted", ref)]})
    outside = everything_in(tmp_path / "work")
    (tmp_path / "layer").mkdir()
    with pytest.raises(snapshot.CorruptCheckpoint, match=pack):
        snapshot.restore(tmp_path / "layer", store, key, digest)
    assert everything_in(tmp_path / "work") == outside


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
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}",
                str(merged),
            ],
            check=True,
        )

    def unmount():
        subprocess.run(["umount", str(merged)], check=True)

    mount()
    yield merged, upper, work, mount, unmount
    subprocess.run(["umount", str(merged)], check=False)


def test_deletions_in_an_overlay_survive_a_restore(overlay, tmp_path):
    merged, upper, work, mount, unmount = overlay
    (merged / "etc/motd").unlink()
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


def store_manifest(store, manifest):
    """Put a manifest written by hand, as a hostile session or someone with access to the store could; return
    its key and hash as the platform would have recorded them."""
    encoded = zstandard.ZstdCompressor().compress(
        manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    )
    key = f"manifests/{uuid.uuid4().hex}.json.zst"
    store.put(key, encoded)
    return key, hashlib.sha256(encoded).hexdigest()


def everything_in(folder):
    return {str(path): path.lstat().st_mode for path in Path(folder).rglob("*")}


def file(path, ref, **fields):
    return {"path": path, "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 12, "chunks": [ref], **fields}


def folder(path):
    return {"path": path, "type": "dir", "mode": 0o755, "mtime_ns": 0}


def link(path, target):
    return {"path": path, "type": "link", "mode": 0o777, "mtime_ns": 0, "target": target}


# Manifests a restore must refuse: the entries, given a folder outside the layer and a valid chunk reference.
HOSTILE = {
    "absolute path": lambda outside, ref: [file(str(outside / "planted"), ref)],
    "dot-dot": lambda outside, ref: [file("../outside/planted", ref)],
    "dot-dot inside": lambda outside, ref: [folder("a"), file("a/../../outside/planted", ref)],
    "dot part": lambda outside, ref: [folder("a"), file("a/./planted", ref)],
    "empty part": lambda outside, ref: [folder("a"), file("a//planted", ref)],
    "NUL": lambda outside, ref: [file("planted\0.txt", ref)],
    "file under a symlink to a folder outside": lambda outside, ref: [
        link("escape", str(outside)),
        file("escape/planted", ref),
    ],
    "folder under a symlink": lambda outside, ref: [link("escape", str(outside)), folder("escape/planted")],
    "character device 1:3": lambda outside, ref: [
        {"path": "null", "type": "device", "mode": stat.S_IFCHR | 0o666, "mtime_ns": 0, "rdev": os.makedev(1, 3)}
    ],
    "whiteout with a block device's mode": lambda outside, ref: [
        {"path": "disk", "type": "whiteout", "mode": stat.S_IFBLK | 0o660, "mtime_ns": 0}
    ],
    "duplicate path": lambda outside, ref: [file("planted", ref), file("planted", ref)],
    "child before its folder": lambda outside, ref: [file("a/planted", ref), folder("a")],
    "child of a file": lambda outside, ref: [file("a", ref), file("a/planted", ref)],
    "opaque file": lambda outside, ref: [file("planted", ref, opaque=True)],
    "chunk that is not a reference": lambda outside, ref: [file("planted", ref[0])],
    "chunk whose digest is not hex": lambda outside, ref: [file("planted", ["../" + ref[0][3:], *ref[1:]])],
    "chunk in a key outside the objects": lambda outside, ref: [
        file("planted", [ref[0], "../../../etc/passwd", 0, 12])
    ],
    "mode that is not a number": lambda outside, ref: [file("planted", ref, mode="0644")],
    "unsupported version": lambda outside, ref: {"version": 99, "entries": [file("planted", ref)]},
    "malformed JSON": lambda outside, ref: b'{"version": 2, "entries": [',
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_manifest_is_refused_and_nothing_is_written_outside_the_layer(tmp_path, case):
    store = LocalStore(tmp_path / "work")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("the host's\n")
    (tmp_path / "source").mkdir()
    (tmp_path / "source/planted").write_text("the session\n")
    ref = snapshot.take(tmp_path / "source", store).manifest["entries"][0]["chunks"][0]
    manifest = HOSTILE[case](outside, ref)
    key, digest = store_manifest(store, {"version": 2, "entries": manifest} if isinstance(manifest, list) else manifest)
    layer = tmp_path / "layer"
    layer.mkdir()
    before = everything_in(tmp_path)
    with pytest.raises(snapshot.CorruptCheckpoint) as refused:
        snapshot.restore(layer, store, key, digest)
    assert everything_in(tmp_path) == before  # nothing written, not even inside the layer
    assert list(outside.iterdir()) == [outside / "precious.txt"]
    assert str(layer) not in str(refused.value)


def test_a_refusal_names_the_entry_and_why(tmp_path):
    store = LocalStore(tmp_path / "work")
    key, digest = store_manifest(store, {"version": 2, "entries": [folder("a/../../b")]})
    (tmp_path / "layer").mkdir()
    with pytest.raises(snapshot.CorruptCheckpoint, match=r"entry 'a/\.\./\.\./b' .*'\.\.'"):
        snapshot.restore(tmp_path / "layer", store, key, digest)


def test_setuid_and_setgid_are_restored_only_when_the_caller_keeps_them(tmp_path):
    store = LocalStore(tmp_path / "work")
    layer = tmp_path / "layer"
    (layer / "shared").mkdir(parents=True)
    (layer / "shared").chmod(0o2775)
    (layer / "tool").write_text("#!/bin/sh\n")
    (layer / "tool").chmod(0o4755)
    saved = snapshot.take(layer, store)
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    plain.mkdir()
    kept.mkdir()
    snapshot.restore(plain, store, saved.manifest_key, saved.manifest_sha256)
    snapshot.restore(kept, store, saved.manifest_key, saved.manifest_sha256, keep_setuid=True)
    assert stat.S_IMODE((plain / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((plain / "shared").stat().st_mode) == 0o775
    assert stat.S_IMODE((kept / "tool").stat().st_mode) == 0o4755
    assert stat.S_IMODE((kept / "shared").stat().st_mode) == 0o2775


class RacingListing:
    """os.scandir, but the session swaps ``victim`` right after the checkpoint has looked at it in the listing:
    the moment between reading a folder and opening what it lists, made to happen every time."""

    def __init__(self, listing, victim, swap):
        self.listing, self.victim, self.swap = listing, victim, swap

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.listing.close()

    def __iter__(self):
        for entry in self.listing:
            yield RacingEntry(entry, self)

    def close(self):
        self.listing.close()


class RacingEntry:
    def __init__(self, entry, listing):
        self.entry, self.listing = entry, listing
        self.name, self.path = entry.name, entry.path

    def race(self, answer):
        """The answer about the entry as it was, then the swap."""
        if self.name == self.listing.victim.name and self.listing.swap:
            self.listing.swap(self.listing.victim)
            self.listing.swap = None
        return answer

    def stat(self, follow_symlinks=True):
        return self.race(self.entry.stat(follow_symlinks=follow_symlinks))

    def is_dir(self, follow_symlinks=True):
        return self.race(self.entry.is_dir(follow_symlinks=follow_symlinks))

    def is_file(self, follow_symlinks=True):
        return self.race(self.entry.is_file(follow_symlinks=follow_symlinks))

    def is_symlink(self):
        return self.race(self.entry.is_symlink())


@pytest.mark.parametrize(
    "swapped", ["a file for a symlink to a host file", "a folder for a symlink to a host folder", "a file for a FIFO"]
)
def test_what_the_session_swaps_while_a_checkpoint_is_taken_is_never_read_through(tmp_path, monkeypatch, swapped):
    store = LocalStore(tmp_path / "work")
    host = tmp_path / "etc"
    host.mkdir()
    (host / "shadow").write_text("root:$6$the host's password hash\n")
    layer = tmp_path / "layer"
    (layer / "notes").mkdir(parents=True)
    (layer / "notes/today.txt").write_text("my notes\n")
    (layer / "notes.txt").write_text("my notes\n")
    os.mkfifo(layer / "waiting")  # a FIFO from the start is left out too
    victim, swap = {
        "a file for a symlink to a host file": (
            layer / "notes.txt",
            lambda path: (path.unlink(), path.symlink_to(host / "shadow")),
        ),
        "a folder for a symlink to a host folder": (
            layer / "notes",
            lambda path: (shutil.rmtree(path), path.symlink_to(host)),
        ),
        "a file for a FIFO": (layer / "notes.txt", lambda path: (path.unlink(), os.mkfifo(path))),
    }[swapped]
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda folder: RacingListing(real_scandir(folder), victim, swap))
    taken = []
    worker = threading.Thread(target=lambda: taken.append(snapshot.take(layer, store)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # blocked opening the FIFO: let it go before failing
        os.close(os.open(victim, os.O_WRONLY))
        worker.join()
    monkeypatch.undo()
    assert taken, "the checkpoint was blocked by a FIFO"
    paths = [entry["path"] for entry in taken[0].manifest["entries"]]
    assert victim.name not in paths  # swapped since the listing: left out, the next checkpoint has it as it is then
    assert not [path for path in paths if path.startswith(f"{victim.name}/") or path == "waiting"]
    secret = hashlib.sha256((host / "shadow").read_bytes()).hexdigest()
    assert secret not in {ref[0] for entry in taken[0].manifest["entries"] for ref in entry.get("chunks", ())}
    restored = tmp_path / "restored"
    restored.mkdir()
    snapshot.restore(restored, store, taken[0].manifest_key, taken[0].manifest_sha256)
    assert "password" not in "".join(path.read_text() for path in restored.rglob("*") if path.is_file())
