"""Snapshot and restore of a session's writable layer, content-addressed.

A checkpoint is a manifest (every path with its type, mode, time and the references of its
content) plus the content, stored once per SHA-256 in zstd frames. A chunk of 1 MiB or more
is an object of its own, named by its hash, one frame. Smaller ones (most files of a Python
environment) are compressed together, about 4 MiB at a time, into one frame: a solid pack, so
that a layer of tens of thousands of small files costs tens of writes, not tens of thousands,
and compresses nearly as well as a tar archive. A reference is ``[sha256, object key, offset,
length]``: in a solid pack, offset and length are those of the piece in the pack's content; in
a pack of version 2 (a frame per piece, appended), those of its frame. Content that does not
compress (random or already compressed, found from a few samples) is stored in raw blocks of
a frame, which costs no search for matches and reads back as any other frame.

When the layer is an overlay's upper directory, its whiteouts (files deleted from the lower
layer) and opaque directories are kept too, so a restored layer hides what the session had
deleted.

A file whose size and modification time match the previous manifest is not read again, and
content whose hash the previous manifest already references is not written again, so the
cost of a checkpoint grows with what changed. Clones restore from, and so reuse, their
parent's content. Every piece and the manifest are verified by their hash on restore.

The layer and the manifests are the session's to write, so both are hostile input: code in
the session runs as root in its sandbox and may change the layer while a checkpoint is taken,
and a manifest the platform recorded may have been crafted. Neither ``take`` nor ``restore``
resolves a path in the layer: they open one name at a time relative to the fd of its folder
and never follow a symlink, so nothing outside the layer is read into a checkpoint or written
by a restore. Every manifest is checked whole before anything is written.
No Django: the session agent and the host's supervisor run this.
"""

import errno
import gc
import hashlib
import json
import os
import re
import stat
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from .store import ContentStore, MissingContent

# A manifest, its entries and their chunk references ([sha256, object key, offset, length]) are JSON: the
# session writes them, so nothing about their shape is assumed before ``_check``.
Manifest = dict[str, Any]
Entry = dict[str, Any]
Ref = list[Any]

VERSION = 3  # 3: small pieces in solid packs; version 2 (packs of a frame each) is still restored
READABLE_VERSIONS = (2, 3)
CHUNK_SIZE = 4 * 2**20
PACKED_BELOW = 2**20  # smaller chunks go into packs
BATCH_SIZE = 4 * 2**20  # pieces are digested and compressed in batches of about this much
MANIFEST_LIMIT = 2**30  # decompressed; a manifest that claims more is refused before it takes the memory
MANIFESTS = "manifests/"
OBJECTS = "objects/"
PACKS = "objects/packs/"  # version 2: a frame per piece, the reference's offset and length in the object
SOLID = "objects/solid/"  # one frame for many pieces, the reference's offset and length in its content
SOLID_LIMIT = 2 * BATCH_SIZE  # decompressed; a solid pack that claims more is refused
WORKERS = 8
IN_FLIGHT = 8  # batches being digested at once: with WORKERS writes, what bounds a checkpoint's memory
CPUS = min(os.cpu_count() or 1, IN_FLIGHT)
LEVEL = 1  # zstd level: on solid packs, smaller and faster than a frame per file at level 3
SAMPLED_FROM = 2**18  # a piece of at least this much is stored raw if samples of it do not compress
SAMPLES, SAMPLE_SIZE = 4, 2**14
INCOMPRESSIBLE = 0.95  # compressed/original of the samples above which a piece is stored raw
RAW_BLOCK = 2**17  # the largest block a zstd frame may hold
OPEN_FOLDERS = 64  # folder fds a restore keeps open
OPAQUE = "trusted.overlay.opaque"  # overlayfs: this directory hides the lower layer's

# O_NOFOLLOW: a name the session swapped for a symlink fails instead of leading out of the layer.
# O_NONBLOCK: one swapped for a FIFO does not wait for a writer.
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = {errno.ENOENT, errno.ENXIO, errno.ENODEV, errno.ENOTDIR, errno.ELOOP}  # no longer what the listing showed

_DIGEST = re.compile(r"[0-9a-f]{64}")
_OBJECT_KEY = re.compile(r"objects/(?:[0-9a-f]{2}/[0-9a-f]{64}|(?:packs|solid)/[0-9a-f]{32})")
_SETUID = stat.S_ISUID | stat.S_ISGID


class CorruptCheckpoint(Exception):
    """The checkpoint cannot be restored as saved: the message says which piece and why."""


@dataclass(frozen=True)
class Saved:
    manifest_key: str
    manifest_sha256: str
    size_bytes: int  # what the layer holds
    stored_bytes: int  # what this checkpoint had to write (compressed)
    manifest: Manifest


def object_key(digest: str) -> str:
    return f"{OBJECTS}{digest[:2]}/{digest}"


def referenced_objects(manifest: Manifest) -> set[str]:
    return {ref[1] for entry in manifest["entries"] for ref in entry.get("chunks", ())}


def walk(layer_fd: int, excluded: Collection[str]) -> Iterator[tuple[str, str, os.DirEntry[str] | None, int]]:
    """Yield (relative path, name, DirEntry, fd) for everything in the layer, parents before children.

    A directory comes once opened (by name from its parent's fd), with no DirEntry and its own
    fd: one swapped since the listing is not entered. Anything else comes with the fd of its
    folder, to be opened by name from there. One fd per level of depth is open at a time.
    """
    levels: list[tuple[int, str, list[str] | None]] = [
        (layer_fd, "", None)
    ]  # (fd, path prefix, names of the subdirectories not entered yet)
    try:
        while levels:
            fd, prefix, subdirectories = levels[-1]
            if subdirectories is None:
                with os.scandir(fd) as listing:
                    found = sorted(listing, key=lambda listed: listed.name)
                subdirectories = []
                for listed in found:
                    relative = prefix + listed.name
                    if relative in excluded:
                        continue
                    if listed.is_dir(follow_symlinks=False):
                        subdirectories.append(listed.name)
                    else:
                        yield relative, listed.name, listed, fd
                levels[-1] = (fd, prefix, subdirectories[::-1])
            elif subdirectories:
                name = subdirectories.pop()
                try:
                    child = os.open(name, _FOLDER, dir_fd=fd)
                except OSError as error:
                    if error.errno in _GONE:
                        continue
                    raise
                levels.append((child, f"{prefix}{name}/", None))
                yield prefix + name, name, None, child
            else:
                levels.pop()
                if levels:
                    os.close(fd)
    finally:
        for fd, _, _ in levels[1:]:
            os.close(fd)


# A batch's (sha256, frame of its own, offset in the solid pack, size) of each piece, and the solid pack's frame.
_Digested = tuple[list[tuple[str, bytes | None, int | None, int]], bytes | None]


class _Saver:
    """Digests, compresses and writes new content in thread pools, a bounded amount at a time.

    hashlib and zstandard release the GIL, so pieces are hashed and compressed on every core
    while the walk reads the next files. Pieces go in batches of about BATCH_SIZE, so that tens of
    thousands of small files cost hundreds of tasks, and the new small pieces of a batch are
    compressed together, as one frame: one solid pack per batch. Results are taken back in the
    order the pieces came, in the walking thread, so every reference is decided there, in order.
    """

    def __init__(
        self, store: ContentStore, cpus: ThreadPoolExecutor, writers: ThreadPoolExecutor, known: dict[str, Ref]
    ) -> None:
        self.store, self.cpus, self.writers = store, cpus, writers
        self.known = known  # sha256 -> reference, for everything already stored
        self.batch: list[tuple[list[Ref], bytes]] = []
        self.batch_bytes = 0
        self.digesting: deque[tuple[Future[_Digested], tuple[list[Ref], ...]]] = (
            deque()
        )  # (future of a batch's results, the chunk lists its pieces belong to)
        self.writing: deque[Future[int]] = deque()
        self.stored = 0

    def add(self, chunks: list[Ref], piece: bytes) -> None:
        """Append the reference of ``piece`` to the list ``chunks`` once it is known (by ``digested`` at the latest)."""
        self.batch.append((chunks, piece))
        self.batch_bytes += len(piece)
        if self.batch_bytes >= BATCH_SIZE:
            self._send()

    def _send(self) -> None:
        chunk_lists, pieces = zip(*self.batch, strict=True)
        self.digesting.append((self.cpus.submit(self._digest, pieces), chunk_lists))
        self.batch, self.batch_bytes = [], 0
        while len(self.digesting) > IN_FLIGHT:
            self._receive()

    def _digest(self, pieces: tuple[bytes, ...]) -> "_Digested":
        """In a CPU thread: (sha256, frame, offset, size) of each piece, and the frame of the batch's solid pack.

        A piece already stored has neither frame nor offset; a new piece of PACKED_BELOW or more has
        a frame of its own; a new smaller one, its offset in the solid pack (each once per batch).
        One frame for all the small pieces compresses better than a frame each (matches across
        files, one set of entropy tables), and faster.
        """
        compressor = zstandard.ZstdCompressor(level=LEVEL)
        results: list[tuple[str, bytes | None, int | None, int]] = []
        offsets: dict[str, int] = {}
        solid: list[bytes] = []
        solid_size = 0
        for piece in pieces:
            digest = hashlib.sha256(piece).hexdigest()
            if digest in self.known:
                results.append((digest, None, None, len(piece)))
            elif len(piece) >= PACKED_BELOW:
                results.append((digest, _frame(compressor, piece), None, len(piece)))
            else:
                if digest not in offsets:
                    offsets[digest] = solid_size
                    solid.append(piece)
                    solid_size += len(piece)
                results.append((digest, None, offsets[digest], len(piece)))
        return results, _frame(compressor, b"".join(solid)) if solid else None

    def _receive(self) -> None:
        future, chunk_lists = self.digesting.popleft()
        results, solid = future.result()
        solid_key = None
        for chunks, (digest, frame, offset, size) in zip(chunk_lists, results, strict=True):
            if digest not in self.known:  # else it was known when digested, or came earlier in this checkpoint
                if offset is None:
                    assert frame is not None  # a new piece has a frame of its own, or an offset in the solid pack
                    key = object_key(digest)
                    self._write(self._put_object, key, frame)
                    self.known[digest] = [digest, key, 0, len(frame)]
                else:
                    solid_key = solid_key or f"{SOLID}{uuid.uuid4().hex}"
                    self.known[digest] = [digest, solid_key, offset, size]
            chunks.append(self.known[digest])
        if solid_key and solid is not None:  # a piece went into the solid pack: it has a frame
            self._write(self._put_pack, solid_key, solid)

    def _write(self, put: Callable[[str, bytes], int], key: str, content: bytes) -> None:
        self.writing.append(self.writers.submit(put, key, content))
        while len(self.writing) > WORKERS:
            self.stored += self.writing.popleft().result()

    def _put_object(self, key: str, frame: bytes) -> int:
        if self.store.has(key):
            return 0
        self.store.put(key, frame)
        return len(frame)

    def _put_pack(self, key: str, frame: bytes) -> int:
        self.store.put(key, frame)
        return len(frame)

    def digested(self) -> None:
        """Wait until every reference is known (the last writes may still be under way)."""
        if self.batch:
            self._send()
        while self.digesting:
            self._receive()

    def written(self) -> int:
        """Wait for every write; return the bytes written."""
        while self.writing:
            self.stored += self.writing.popleft().result()
        return self.stored


def _frame(compressor: zstandard.ZstdCompressor, content: bytes) -> bytes:
    return _raw_frame(content) if _incompressible(compressor, content) else compressor.compress(content)


def _incompressible(compressor: zstandard.ZstdCompressor, content: bytes) -> bool:
    """Whether samples spread over ``content`` (of at least SAMPLED_FROM bytes) barely compress: random or already
    compressed content, which zstd would store in raw blocks after searching all of it for matches in vain."""
    if len(content) < SAMPLED_FROM:
        return False
    view, step = memoryview(content), (len(content) - SAMPLE_SIZE) // (SAMPLES - 1)
    sample = b"".join(view[number * step : number * step + SAMPLE_SIZE] for number in range(SAMPLES))
    return len(compressor.compress(sample)) > INCOMPRESSIBLE * len(sample)


def _raw_frame(content: bytes) -> bytes:
    """A zstd frame holding ``content`` as it is, in raw blocks (what zstd writes for content that does not
    compress), with the content size in its header as a restore requires."""
    view, size = memoryview(content), len(content)
    # Magic number; descriptor: single segment, a 4-byte content size, no checksum, no dictionary; the size.
    parts: list[bytes | memoryview] = [b"\x28\xb5\x2f\xfd\xa0", size.to_bytes(4, "little")]
    for start in range(0, size, RAW_BLOCK):
        block = view[start : start + RAW_BLOCK]
        last = start + RAW_BLOCK >= size
        parts += [(len(block) << 3 | last).to_bytes(3, "little"), block]  # block type 0: raw
    return b"".join(parts)


def _entry(relative: str, info: os.stat_result, **fields: Any) -> Entry:
    return {"path": relative, "mode": stat.S_IMODE(info.st_mode), "mtime_ns": info.st_mtime_ns, **fields}


def _lstat(listed: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return listed.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None


def _read(relative: str, name: str, folder_fd: int, saver: _Saver) -> Entry | None:
    """The entry of a regular file, its content sent to ``saver``; None if ``name`` is no longer a regular file.

    What counts is the opened file's own fstat, not the listing: the session may have swapped
    the file for a symlink (not followed), a FIFO (not waited on) or a device since.
    """
    try:
        fd = os.open(name, _READ, dir_fd=folder_fd)
    except OSError as error:
        if error.errno in _GONE:
            return None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        entry = _entry(relative, info, type="file", chunks=[])
        size = 0
        while size < info.st_size:  # no further than the size it had: a file growing meanwhile cannot hold us up
            piece = os.read(fd, min(CHUNK_SIZE, info.st_size - size))
            if not piece:
                break
            saver.add(entry["chunks"], piece)
            size += len(piece)
        entry["size"] = size
        return entry
    finally:
        os.close(fd)


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE) == b"y"
    except OSError:
        return False


def take(
    layer: str | Path,
    store: ContentStore,
    previous: Manifest | None = None,
    excluded: Collection[str] = ("data",),
    manifest_prefix: str = "shared",
) -> Saved:
    """Save the layer as a new checkpoint in ``store``, its manifest under ``manifest_prefix`` (the studio's own
    folder); ``previous`` is the last manifest, if any."""
    previous_entries = (previous or {}).get("entries", [])
    unchanged = {e["path"]: e for e in previous_entries if e["type"] == "file"}
    known = {ref[0]: ref for e in previous_entries for ref in e.get("chunks", ())}
    entries: list[Entry] = []
    size = 0
    layer_fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # The entries are tens of thousands of dicts that all live until the end: the cyclic collector would walk
    # them again and again for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with ThreadPoolExecutor(max_workers=CPUS) as cpus, ThreadPoolExecutor(max_workers=WORKERS) as writers:
            saver = _Saver(store, cpus, writers, known)
            entry: Entry | None
            for relative, name, listed, fd in walk(layer_fd, set(excluded)):
                if listed is None:
                    entry = _entry(relative, os.fstat(fd), type="dir")
                    if _is_opaque(fd):
                        entry["opaque"] = True
                elif listed.is_file(follow_symlinks=False):
                    # Not stat'ed unless the previous checkpoint has it: reading it, its own fstat counts.
                    before = unchanged.get(relative)
                    info = _lstat(listed) if before else None
                    if before and info and before["size"] == info.st_size and before["mtime_ns"] == info.st_mtime_ns:
                        entry = _entry(relative, info, type="file", size=info.st_size, chunks=before["chunks"])
                    else:
                        entry = _read(relative, name, fd, saver)
                        if entry is None:
                            continue
                    size += entry["size"]
                else:
                    info = _lstat(listed)
                    if info and stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                        entry = _entry(relative, info, type="whiteout")
                    elif info and stat.S_ISLNK(info.st_mode):
                        try:
                            entry = _entry(relative, info, type="link", target=os.readlink(name, dir_fd=fd))
                        except OSError as error:  # no longer a link
                            if error.errno not in _GONE | {errno.EINVAL}:
                                raise
                            continue
                    else:
                        continue  # sockets, pipes and devices belong to the running session only
                entries.append(entry)
            saver.digested()
            manifest = {"version": VERSION, "entries": entries}
            # Encoded while the last writes complete.
            encoded = zstandard.ZstdCompressor(level=3).compress(
                json.dumps(manifest, separators=(",", ":"), check_circular=False).encode()
            )
            stored = saver.written()
    finally:
        os.close(layer_fd)
        if collecting:
            gc.enable()
    # The manifest is written last, once all of the content is durable: a checkpoint exists only once all of it does.
    store.persist()
    key = f"{MANIFESTS}{manifest_prefix}/{uuid.uuid4().hex}.json.zst"
    store.put(key, encoded)
    store.persist()
    return Saved(key, hashlib.sha256(encoded).hexdigest(), size, stored + len(encoded), manifest)


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _path_problem(path: object, seen: set[str], folders: set[str]) -> str | None:
    if not isinstance(path, str) or not path:
        return "has no path"
    if path.startswith("/"):
        return "has an absolute path"
    names = path.split("/")
    if any(name in ("", ".", "..") for name in names):
        return "has a path with an empty, '.' or '..' part"
    if "\0" in path:
        return "has a NUL in its path"
    try:
        if any(len(os.fsencode(name)) > 255 for name in names):
            return "has a name longer than 255 bytes"
    except UnicodeEncodeError:
        return "has a path that is no file name"
    if path in seen:
        return "appears twice"
    if path.rpartition("/")[0] not in folders:
        return "does not come after a directory entry for its folder"
    return None


def _chunks_problem(chunks: object) -> str | None:
    if not isinstance(chunks, list):
        return "has no list of chunks"
    for ref in chunks:
        if not (isinstance(ref, list) and len(ref) == 4):
            return "has a chunk reference that is not [sha256, object key, offset, length]"
        digest, key, offset, length = ref
        if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            return "has a chunk whose sha256 is not 64 hex digits"
        if not (isinstance(key, str) and _OBJECT_KEY.fullmatch(key)):
            return "has a chunk in something that is not a content object"
        if not (_is_int(offset, 0, 2**63) and _is_int(length, 1, 2**63)):
            return "has a chunk with an invalid offset or length"
    return None


def _entry_problem(entry: object, seen: set[str], folders: set[str]) -> str | None:
    """Why restoring this entry could not recreate it inside the layer as a checkpoint saves it; None if it can."""
    if not isinstance(entry, dict):
        return "is not an object"
    problem = _path_problem(entry.get("path"), seen, folders)
    if problem:
        return problem
    kind = entry.get("type")
    if kind not in ("dir", "file", "link", "whiteout"):
        return "is not a directory, file, symlink or whiteout (devices and other special files are refused)"
    if not _is_int(entry.get("mode"), 0, 0o7777):
        return "has a mode beyond permission bits"
    if not _is_int(entry.get("mtime_ns"), -(2**63), 2**63 - 1):
        return "has an invalid modification time"
    if "opaque" in entry and (kind != "dir" or not isinstance(entry["opaque"], bool)):
        return "is marked opaque but is no directory"
    if kind == "file":
        if not _is_int(entry.get("size"), 0, 2**63):
            return "has an invalid size"
        return _chunks_problem(entry.get("chunks"))
    if kind == "link":
        target = entry.get("target")
        if not (isinstance(target, str) and target and "\0" not in target):
            return "has an invalid symlink target"
        try:
            if len(os.fsencode(target)) >= 4096:
                return "has a symlink target longer than 4095 bytes"
        except UnicodeEncodeError:
            return "has an invalid symlink target"
    return None


def _check(manifest: object, key: str) -> None:
    """Refuse a manifest that a restore could not recreate inside the layer exactly as written.

    Paths must be relative and normalised, each once, and come after the directory entry of
    their folder, so that a restore only ever writes into directories it has just created
    itself: a symlink entry cannot be a folder, and no path leaves the layer.
    """
    if not (
        isinstance(manifest, dict)
        and manifest.get("version") in READABLE_VERSIONS
        and isinstance(manifest.get("entries"), list)
    ):
        raise CorruptCheckpoint(f"its manifest {key} is not a manifest of version 2 or 3")
    seen: set[str] = set()
    folders = {""}
    for number, entry in enumerate(manifest["entries"]):
        problem = _entry_problem(entry, seen, folders)
        if problem:
            path = entry.get("path") if isinstance(entry, dict) else None
            named = repr(path) if isinstance(path, str) else f"number {number + 1}"
            raise CorruptCheckpoint(f"entry {named} of its manifest {problem}")
        seen.add(entry["path"])
        if entry["type"] == "dir":
            folders.add(entry["path"])


def load_manifest(store: ContentStore, key: str, expected_sha256: str) -> Manifest:
    """The manifest, verified against the platform's record of its hash and checked whole (see ``_check``)."""
    try:
        encoded = store.get(key)
    except MissingContent:
        raise CorruptCheckpoint(f"its manifest {key} is missing from the store") from None
    if hashlib.sha256(encoded).hexdigest() != expected_sha256:
        raise CorruptCheckpoint(f"its manifest {key} does not match its checksum")
    try:
        if not 0 <= zstandard.frame_content_size(encoded) <= MANIFEST_LIMIT:
            raise CorruptCheckpoint(f"its manifest {key} does not say its size or is too large")
        manifest: Manifest = json.loads(zstandard.ZstdDecompressor().decompress(encoded))
    except (zstandard.ZstdError, ValueError, RecursionError):
        raise CorruptCheckpoint(f"its manifest {key} is not compressed JSON") from None
    _check(manifest, key)
    return manifest


def _decompress(frame: bytes, limit: int, decompressor: zstandard.ZstdDecompressor | None = None) -> bytes:
    """The content of one zstd frame that says its size, at most ``limit``: one that claims more is refused
    before it takes the memory."""
    if not 0 <= zstandard.frame_content_size(frame) <= limit:
        raise zstandard.ZstdError("too large or of unknown size")
    return (decompressor or zstandard.ZstdDecompressor()).decompress(frame)


class _Reader:
    """Fetches the objects a restore needs in the order it needs them, a few ahead, each once.

    Objects of a piece and solid packs are decompressed as they are fetched, in the pool's threads;
    a version-2 pack, a frame per piece, is decompressed piece by piece as they are asked for.
    """

    def __init__(
        self, store: ContentStore, pool: ThreadPoolExecutor, refs: list[Ref], window: int = 2 * WORKERS
    ) -> None:
        self.store, self.pool, self.window = store, pool, window
        self.order = list(dict.fromkeys(ref[1] for ref in refs))
        self.uses = Counter(ref[1] for ref in refs)
        self.fetched: dict[str, Future[bytes | None]] = {}
        self.next = 0
        self.decompressor = zstandard.ZstdDecompressor()  # for version-2 packs, in the restoring thread

    def _get(self, key: str) -> bytes | None:
        try:
            blob = self.store.get(key)
        except MissingContent:
            return None
        if key.startswith(PACKS):
            return blob
        try:
            return _decompress(blob, SOLID_LIMIT if key.startswith(SOLID) else CHUNK_SIZE)
        except zstandard.ZstdError:
            raise CorruptCheckpoint(f"object {key} cannot be decompressed") from None

    def piece(self, ref: Ref) -> bytes | memoryview:
        digest, key, offset, length = ref
        while self.next < len(self.order) and (len(self.fetched) < self.window or key not in self.fetched):
            upcoming = self.order[self.next]
            self.fetched[upcoming] = self.pool.submit(self._get, upcoming)
            self.next += 1
        content = self.fetched[key].result()
        self.uses[key] -= 1
        if not self.uses[key]:
            del self.fetched[key]
        if content is None:
            raise CorruptCheckpoint(f"object {key} holding chunk {digest[:12]} is missing from the store")
        piece: bytes | memoryview
        if key.startswith(PACKS):
            try:
                piece = _decompress(content[offset : offset + length], CHUNK_SIZE, self.decompressor)
            except zstandard.ZstdError:
                raise CorruptCheckpoint(f"chunk {digest[:12]} in {key} cannot be decompressed") from None
        elif key.startswith(SOLID):
            if offset + length > len(content):
                raise CorruptCheckpoint(f"chunk {digest[:12]} is beyond the end of {key}")
            piece = memoryview(content)[offset : offset + length]
        else:
            piece = content  # the whole object: its reference's length is that of its first writer's frame
        if hashlib.sha256(piece).hexdigest() != digest:
            raise CorruptCheckpoint(f"chunk {digest[:12]} in {key} does not match its checksum")
        return piece


class _Folders:
    """Fds of the layer's directories by relative path ('' is the layer), a bounded number open at a time.

    Each is opened one name at a time from its parent's fd without following a symlink, and only
    directories the restore created itself are ever asked for.
    """

    def __init__(self, layer_fd: int) -> None:
        self.layer_fd = layer_fd
        self.open: OrderedDict[str, int] = OrderedDict()

    def fd(self, path: str) -> int:
        names = []
        while path and path not in self.open:
            path, _, name = path.rpartition("/")
            names.append(name)
        fd = self.open[path] if path else self.layer_fd
        if path:
            self.open.move_to_end(path)
        for name in reversed(names):
            fd = os.open(name, _FOLDER, dir_fd=fd)
            path = f"{path}/{name}" if path else name
            self.open[path] = fd
            if len(self.open) > OPEN_FOLDERS:
                os.close(self.open.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self.open.values():
            os.close(fd)


def restore(
    layer: str | Path, store: ContentStore, key: str, expected_sha256: str, keep_setuid: bool = False
) -> Manifest:
    """Recreate the saved layer in ``layer`` (which should be empty); return the manifest.

    Setuid and setgid bits are restored only with ``keep_setuid``: a caller passes it when the
    layer is mounted nosuid and only ever used as a container's layer.
    """
    manifest = load_manifest(store, key, expected_sha256)
    modes = 0o7777 if keep_setuid else 0o7777 & ~_SETUID
    directories = []
    layer_fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    folders = _Folders(layer_fd)
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            reader = _Reader(store, pool, [ref for entry in manifest["entries"] for ref in entry.get("chunks", ())])
            for entry in manifest["entries"]:
                folder, _, name = entry["path"].rpartition("/")
                mode = entry["mode"] & modes
                if entry["type"] == "dir":
                    os.mkdir(name, 0o700, dir_fd=folders.fd(folder))
                    if entry.get("opaque"):
                        os.setxattr(folders.fd(entry["path"]), OPAQUE, b"y")
                    directories.append((entry["path"], mode, entry["mtime_ns"]))
                elif entry["type"] == "link":
                    os.symlink(entry["target"], name, dir_fd=folders.fd(folder))
                elif entry["type"] == "whiteout":
                    os.mknod(name, stat.S_IFCHR | mode, os.makedev(0, 0), dir_fd=folders.fd(folder))
                else:
                    fd = os.open(name, _CREATE, 0o600, dir_fd=folders.fd(folder))
                    try:
                        for ref in entry["chunks"]:
                            piece = memoryview(reader.piece(ref))
                            while piece:
                                piece = piece[os.write(fd, piece) :]
                        os.fchmod(fd, mode)
                        os.utime(fd, ns=(entry["mtime_ns"], entry["mtime_ns"]))
                    finally:
                        os.close(fd)
        # Last, children first: a folder's time changes with every entry made in it, and a read-only one takes none.
        for path, mode, mtime_ns in reversed(directories):
            fd = folders.fd(path)
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        folders.close()
        os.close(layer_fd)
    return manifest
