"""Checkpoint cost: content-addressed snapshots against a plain ``tar | zstd`` of the whole layer.

Prepares a writable layer of realistic content (a copy of this Python environment's
site-packages up to LAYER_MB, plus two 64 MiB binary files), then for RUNS runs, each on a
fresh local store, measures: the first checkpoint (time, bytes stored), a second checkpoint
after changing 1 MiB of a binary file, and a restore into an empty folder; and the same
layer through tar + zstd (level 3, as the snapshots use): archive, and extract. Prints medians.
Usage: .venv/bin/python bench/checkpoint_bench.py [RUNS] [LAYER_MB]
"""

import os
import shutil
import statistics
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints import snapshot  # noqa: E402
from checkpoints.store import LocalStore  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
LAYER_MB = int(sys.argv[2]) if len(sys.argv) > 2 else 300


def prepare_layer(root):
    packages = Path(sysconfig.get_paths()["purelib"])
    target = root / ".local/lib/python3.11/site-packages"
    target.mkdir(parents=True)
    total = 0
    for package in sorted(packages.iterdir()):
        if total > LAYER_MB * 2**20:
            break
        if package.is_dir():
            shutil.copytree(package, target / package.name, symlinks=True)
            total += sum(f.stat().st_size for f in (target / package.name).rglob("*") if f.is_file())
    for name in ("reference.bin", "model.bin"):
        (root / name).write_bytes(os.urandom(64 * 2**20))
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())


def timed(function):
    began = time.perf_counter()
    result = function()
    return time.perf_counter() - began, result


def tar_zstd(layer, archive):
    with open(archive, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as compressed:
        with tarfile.open(fileobj=compressed, mode="w|") as tar:
            tar.add(layer, arcname=".")
    return archive.stat().st_size


def untar_zstd(archive, target):
    with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as decompressed:
        with tarfile.open(fileobj=decompressed, mode="r|") as tar:
            tar.extractall(target, filter="tar")


def main():
    work = Path(tempfile.mkdtemp(prefix="checkpoint-bench-"))
    layer = work / "layer"
    size = prepare_layer(layer)
    files = sum(1 for f in layer.rglob("*") if f.is_file())
    rows = {name: [] for name in ("first", "first_bytes", "second", "second_bytes", "restore", "tar", "tar_bytes", "untar")}
    for run in range(RUNS):
        store = LocalStore(work / f"store-{run}")
        seconds, first = timed(lambda: snapshot.take(layer, store))
        rows["first"].append(seconds)
        rows["first_bytes"].append(first.stored_bytes)
        with open(layer / "model.bin", "r+b") as binary:
            binary.seek(20 * 2**20)
            binary.write(os.urandom(2**20))
        seconds, second = timed(lambda: snapshot.take(layer, store, previous=first.manifest))
        rows["second"].append(seconds)
        rows["second_bytes"].append(second.stored_bytes)
        target = work / f"restored-{run}"
        target.mkdir()
        rows["restore"].append(timed(lambda: snapshot.restore(target, store, second.manifest_key, second.manifest_sha256))[0])
        seconds, archived = timed(lambda: tar_zstd(layer, work / f"layer-{run}.tar.zst"))
        rows["tar"].append(seconds)
        rows["tar_bytes"].append(archived)
        untarred = work / f"untarred-{run}"
        untarred.mkdir()
        rows["untar"].append(timed(lambda: untar_zstd(work / f"layer-{run}.tar.zst", untarred))[0])
        for leftover in (target, untarred, work / f"store-{run}", work / f"layer-{run}.tar.zst"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
    median = {name: statistics.median(values) for name, values in rows.items()}
    mb = 2**20
    print(f"layer: {size / mb:.0f} MiB in {files} files; medians of {RUNS} runs")
    print(f"{'':32}{'snapshots':>16}{'tar | zstd':>16}")
    print(f"{'first checkpoint, time':32}{median['first']:>14.2f} s{median['tar']:>14.2f} s")
    print(f"{'first checkpoint, stored':32}{median['first_bytes'] / mb:>12.1f} MiB{median['tar_bytes'] / mb:>12.1f} MiB")
    print(f"{'after changing 1 MiB, time':32}{median['second']:>14.2f} s{median['tar']:>14.2f} s")
    print(f"{'after changing 1 MiB, stored':32}{median['second_bytes'] / mb:>12.1f} MiB{median['tar_bytes'] / mb:>12.1f} MiB")
    print(f"{'restore, time':32}{median['restore']:>14.2f} s{median['untar']:>14.2f} s")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
