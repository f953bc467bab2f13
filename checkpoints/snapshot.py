"""Snapshot and restore of a session's writable layer, content-addressed.

A checkpoint is a manifest (every path with its type, mode, times and the hashes of its
chunks) plus the chunks themselves, each stored once under its SHA-256 and compressed with
zstd. A file whose size and modification time match the previous manifest is not read
again, and a chunk the store already holds is not written again, so the cost of a
checkpoint grows with what changed. Clones reference the same chunks. Every chunk and the
manifest are verified by their hash on restore. No Django: the session agent runs this.
"""

import hashlib
import json
import os
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .store import MissingContent

CHUNK_SIZE = 4 * 2**20
MANIFESTS = "manifests/"
OBJECTS = "objects/"


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


def chunks_of(manifest):
    return {digest for entry in manifest["entries"] for digest in entry.get("chunks", ())}


def _walk(layer, excluded):
    """Yield (relative path, lstat) for everything in the layer, parents before children."""
    stack = [layer]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = Path(entry.path)
                relative = path.relative_to(layer).as_posix()
                if relative in excluded:
                    continue
                info = entry.stat(follow_symlinks=False)
                yield relative, info
                if stat.S_ISDIR(info.st_mode):
                    stack.append(path)


def take(layer, store, previous=None, excluded=("data",)):
    """Save the layer as a new checkpoint in ``store``; ``previous`` is the last manifest, if any."""
    layer = Path(layer)
    known = {e["path"]: e for e in (previous or {}).get("entries", []) if e["type"] == "file"}
    present = chunks_of(previous) if previous else set()
    compressor = zstandard.ZstdCompressor(level=3)
    entries, size, stored = [], 0, 0
    writes = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for relative, info in _walk(layer, set(excluded)):
            entry = {"path": relative, "mode": stat.S_IMODE(info.st_mode), "mtime_ns": info.st_mtime_ns}
            if stat.S_ISDIR(info.st_mode):
                entry["type"] = "dir"
            elif stat.S_ISLNK(info.st_mode):
                entry.update(type="link", target=os.readlink(layer / relative))
            elif stat.S_ISREG(info.st_mode):
                entry.update(type="file", size=info.st_size)
                before = known.get(relative)
                if before and before["size"] == info.st_size and before["mtime_ns"] == info.st_mtime_ns:
                    entry["chunks"] = before["chunks"]
                else:
                    entry["chunks"] = []
                    with open(layer / relative, "rb") as file:
                        while piece := file.read(CHUNK_SIZE):
                            digest = hashlib.sha256(piece).hexdigest()
                            entry["chunks"].append(digest)
                            if digest not in present:
                                present.add(digest)
                                compressed = compressor.compress(piece)
                                writes.append(pool.submit(_put_new, store, object_key(digest), compressed))
                size += info.st_size
            else:
                continue  # sockets, pipes and devices belong to the running session only
            entries.append(entry)
        stored += sum(future.result() for future in writes)
    manifest = {"version": 1, "entries": entries}
    encoded = compressor.compress(json.dumps(manifest, separators=(",", ":")).encode())
    key = f"{MANIFESTS}{uuid.uuid4().hex}.json.zst"
    store.put(key, encoded)
    return Saved(key, hashlib.sha256(encoded).hexdigest(), size, stored + len(encoded), manifest)


def _put_new(store, key, compressed):
    if store.has(key):
        return 0
    store.put(key, compressed)
    return len(compressed)


def load_manifest(store, key, expected_sha256):
    try:
        encoded = store.get(key)
    except MissingContent:
        raise CorruptCheckpoint(f"its manifest {key} is missing from the store") from None
    if hashlib.sha256(encoded).hexdigest() != expected_sha256:
        raise CorruptCheckpoint(f"its manifest {key} does not match its checksum")
    return json.loads(zstandard.ZstdDecompressor().decompress(encoded))


def restore(layer, store, key, expected_sha256):
    """Recreate the saved layer in ``layer`` (which should be empty); return the manifest."""
    layer = Path(layer)
    manifest = load_manifest(store, key, expected_sha256)

    def fetch(digest):
        try:
            # One decompressor per call: they are not safe to share between threads.
            piece = zstandard.ZstdDecompressor().decompress(store.get(object_key(digest)))
        except MissingContent:
            raise CorruptCheckpoint(f"chunk {digest[:12]} is missing from the store") from None
        except zstandard.ZstdError:
            raise CorruptCheckpoint(f"chunk {digest[:12]} cannot be decompressed") from None
        if hashlib.sha256(piece).hexdigest() != digest:
            raise CorruptCheckpoint(f"chunk {digest[:12]} does not match its checksum")
        return piece

    directories = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for entry in manifest["entries"]:
            path = layer / entry["path"]
            if entry["type"] == "dir":
                path.mkdir(parents=True, exist_ok=True)
                directories.append((path, entry))
            elif entry["type"] == "link":
                path.symlink_to(entry["target"])
            else:
                with open(path, "wb") as file:
                    for piece in pool.map(fetch, entry["chunks"]):
                        file.write(piece)
                os.chmod(path, entry["mode"])
                os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
    for path, entry in reversed(directories):
        os.chmod(path, entry["mode"])
        os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
    return manifest
