"""Snapshot and restore of a session's writable layer, content-addressed.

A checkpoint is a manifest (every path with its type, mode, time and the references of its
content) plus the content, stored once per SHA-256 and compressed with zstd. A chunk of
1 MiB or more is an object of its own, named by its hash; smaller ones (most files of a
Python environment) are appended to pack objects of about 8 MiB, so that a layer of tens of
thousands of small files costs tens of writes, not tens of thousands. A reference is
``[sha256, object key, offset, length]`` into a stored object.

When the layer is an overlay's upper directory, its whiteouts (files deleted from the lower
layer) and opaque directories are kept too, so a restored layer hides what the session had
deleted.

A file whose size and modification time match the previous manifest is not read again, and
content whose hash the previous manifest already references is not written again, so the
cost of a checkpoint grows with what changed. Clones restore from, and so reuse, their
parent's content. Every piece and the manifest are verified by their hash on restore.
No Django: the session agent runs this.
"""

import hashlib
import json
import os
import stat
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .store import MissingContent

CHUNK_SIZE = 4 * 2**20
PACKED_BELOW = 2**20  # smaller chunks go into packs
PACK_SIZE = 8 * 2**20
MANIFESTS = "manifests/"
OBJECTS = "objects/"
WORKERS = 8
OPAQUE = "trusted.overlay.opaque"  # overlayfs: this directory hides the lower layer's


class CorruptCheckpoint(Exception):
    """The checkpoint cannot be restored as saved: the message says which piece and why."""


@dataclass(frozen=True)
class Saved:
    manifest_key: str
    manifest_sha256: str
    size_bytes: int  # what the layer holds
    stored_bytes: int  # what this checkpoint had to write (compressed)
    manifest: dict


def object_key(digest):
    return f"{OBJECTS}{digest[:2]}/{digest}"


def referenced_objects(manifest):
    return {ref[1] for entry in manifest["entries"] for ref in entry.get("chunks", ())}


def _walk(layer, excluded):
    """Yield (relative path, lstat) for everything in the layer, parents before children."""
    stack = [layer]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                relative = Path(entry.path).relative_to(layer).as_posix()
                if relative in excluded:
                    continue
                info = entry.stat(follow_symlinks=False)
                yield relative, info
                if stat.S_ISDIR(info.st_mode):
                    stack.append(Path(entry.path))


class _Writer:
    """Writes new content: big chunks as their own objects, small ones into packs; all in a thread pool."""

    def __init__(self, store, pool, known):
        self.store, self.pool = store, pool
        self.known = known  # sha256 -> reference, for everything already stored
        self.compressor = zstandard.ZstdCompressor(level=3)
        self.pack, self.pack_key = bytearray(), None
        self.writes = []

    def add(self, piece):
        digest = hashlib.sha256(piece).hexdigest()
        if digest in self.known:
            return self.known[digest]
        compressed = self.compressor.compress(piece)
        if len(piece) >= PACKED_BELOW:
            ref = [digest, object_key(digest), 0, len(compressed)]
            self.writes.append(self.pool.submit(self._put_object, ref[1], compressed))
        else:
            if self.pack_key is None:
                self.pack_key = f"{OBJECTS}packs/{uuid.uuid4().hex}"
            ref = [digest, self.pack_key, len(self.pack), len(compressed)]
            self.pack += compressed
            if len(self.pack) >= PACK_SIZE:
                self.flush()
        self.known[digest] = ref
        return ref

    def _put_object(self, key, compressed):
        if self.store.has(key):
            return 0
        self.store.put(key, compressed)
        return len(compressed)

    def _put_pack(self, key, pack):
        self.store.put(key, pack)
        return len(pack)

    def flush(self):
        if self.pack:
            self.writes.append(self.pool.submit(self._put_pack, self.pack_key, bytes(self.pack)))
        self.pack, self.pack_key = bytearray(), None

    def finish(self):
        """Wait for every write; return the bytes written."""
        self.flush()
        return sum(write.result() for write in self.writes)


def _is_opaque(path):
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def take(layer, store, previous=None, excluded=("data",), manifest_prefix="shared"):
    """Save the layer as a new checkpoint in ``store``, its manifest under ``manifest_prefix`` (the studio's own
    folder); ``previous`` is the last manifest, if any."""
    layer = Path(layer)
    previous_entries = (previous or {}).get("entries", [])
    unchanged = {e["path"]: e for e in previous_entries if e["type"] == "file"}
    known = {ref[0]: ref for e in previous_entries for ref in e.get("chunks", ())}
    entries, size = [], 0
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        writer = _Writer(store, pool, known)
        for relative, info in _walk(layer, set(excluded)):
            entry = {"path": relative, "mode": stat.S_IMODE(info.st_mode), "mtime_ns": info.st_mtime_ns}
            if stat.S_ISDIR(info.st_mode):
                entry["type"] = "dir"
                if _is_opaque(layer / relative):
                    entry["opaque"] = True
            elif stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                entry["type"] = "whiteout"
            elif stat.S_ISLNK(info.st_mode):
                entry.update(type="link", target=os.readlink(layer / relative))
            elif stat.S_ISREG(info.st_mode):
                entry.update(type="file", size=info.st_size)
                before = unchanged.get(relative)
                if before and before["size"] == info.st_size and before["mtime_ns"] == info.st_mtime_ns:
                    entry["chunks"] = before["chunks"]
                else:
                    with open(layer / relative, "rb") as file:
                        entry["chunks"] = [writer.add(piece) for piece in iter(lambda: file.read(CHUNK_SIZE), b"")]
                size += info.st_size
            else:
                continue  # sockets, pipes and devices belong to the running session only
            entries.append(entry)
        stored = writer.finish()
    # The manifest is written last: a checkpoint exists only once all of its content does.
    manifest = {"version": 2, "entries": entries}
    encoded = zstandard.ZstdCompressor(level=3).compress(json.dumps(manifest, separators=(",", ":")).encode())
    key = f"{MANIFESTS}{manifest_prefix}/{uuid.uuid4().hex}.json.zst"
    store.put(key, encoded)
    return Saved(key, hashlib.sha256(encoded).hexdigest(), size, stored + len(encoded), manifest)


def load_manifest(store, key, expected_sha256):
    try:
        encoded = store.get(key)
    except MissingContent:
        raise CorruptCheckpoint(f"its manifest {key} is missing from the store") from None
    if hashlib.sha256(encoded).hexdigest() != expected_sha256:
        raise CorruptCheckpoint(f"its manifest {key} does not match its checksum")
    return json.loads(zstandard.ZstdDecompressor().decompress(encoded))


class _Reader:
    """Fetches the objects a restore needs in the order it needs them, a few ahead, each once."""

    def __init__(self, store, pool, refs, window=2 * WORKERS):
        self.store, self.pool, self.window = store, pool, window
        self.order = list(dict.fromkeys(ref[1] for ref in refs))
        self.uses = Counter(ref[1] for ref in refs)
        self.fetched = {}
        self.next = 0

    def _get(self, key):
        try:
            return self.store.get(key)
        except MissingContent:
            return None

    def piece(self, ref):
        digest, key, offset, length = ref
        while self.next < len(self.order) and (len(self.fetched) < self.window or key not in self.fetched):
            upcoming = self.order[self.next]
            self.fetched[upcoming] = self.pool.submit(self._get, upcoming)
            self.next += 1
        blob = self.fetched[key].result()
        self.uses[key] -= 1
        if not self.uses[key]:
            del self.fetched[key]
        if blob is None:
            raise CorruptCheckpoint(f"object {key} holding chunk {digest[:12]} is missing from the store")
        try:
            piece = zstandard.ZstdDecompressor().decompress(blob[offset : offset + length])
        except zstandard.ZstdError:
            raise CorruptCheckpoint(f"chunk {digest[:12]} in {key} cannot be decompressed") from None
        if hashlib.sha256(piece).hexdigest() != digest:
            raise CorruptCheckpoint(f"chunk {digest[:12]} in {key} does not match its checksum")
        return piece


def restore(layer, store, key, expected_sha256, keep_setuid=False):
    """Recreate the saved layer in ``layer`` (which should be empty); return the manifest."""
    layer = Path(layer)
    manifest = load_manifest(store, key, expected_sha256)
    directories = []
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        reader = _Reader(store, pool, [ref for entry in manifest["entries"] for ref in entry.get("chunks", ())])
        for entry in manifest["entries"]:
            path = layer / entry["path"]
            if entry["type"] == "dir":
                path.mkdir(parents=True, exist_ok=True)
                if entry.get("opaque"):
                    os.setxattr(path, OPAQUE, b"y")
                directories.append((path, entry))
            elif entry["type"] == "link":
                path.symlink_to(entry["target"])
            elif entry["type"] == "whiteout":
                os.mknod(path, stat.S_IFCHR | entry["mode"], os.makedev(0, 0))
            else:
                with open(path, "wb") as file:
                    for ref in entry["chunks"]:
                        file.write(reader.piece(ref))
                os.chmod(path, entry["mode"])
                os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
    for path, entry in reversed(directories):
        os.chmod(path, entry["mode"])
        os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
    return manifest
