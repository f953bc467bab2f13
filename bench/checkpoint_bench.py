"""Checkpoint cost: content-addressed snapshots against a plain ``tar | zstd`` of the whole layer.

Prepares a writable layer of realistic content (a copy of this Python environment's
site-packages up to LAYER_MB, plus two 64 MiB binary files), then for RUNS runs, each on a
fresh local store, measures: the first checkpoint (time, bytes stored), a second checkpoint
after changing 1 MiB of a binary file, and a restore into an empty folder; and the same
layer through the real command line ``tar -c | zstd -3`` (Debian's tar and zstd, level 3 as
the snapshots use): archive, and extract. Prints medians, of the time and of the CPU time.

BASELINE, a checkout of this repository (e.g. a git worktree of main), adds a column: its
``checkpoints/snapshot.py`` measured in the same runs, interleaved, on the same layer, so a
change is compared under the same load.

Nothing is deleted until the end (a few GB in TMPDIR): ext4 without a journal, as on the
development VM, does not reuse an inode for a minute after it is deleted (six while its inode
table block is dirty), and creating tens of thousands of files next to as many just deleted
took 20 s instead of 2, in the kernel's search for a free inode, whatever wrote them.
Usage: .venv/bin/python bench/checkpoint_bench.py [RUNS] [LAYER_MB] [BASELINE]
"""

import importlib
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints import snapshot
from checkpoints.store import LocalStore

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
LAYER_MB = int(sys.argv[2]) if len(sys.argv) > 2 else 300
BASELINE = Path(sys.argv[3]).resolve() if len(sys.argv) > 3 else None


def baseline_snapshot():
    """The baseline checkout's snapshot module, imported under another package name next to ours."""
    package = BASELINE / "checkpoints"
    spec = importlib.util.spec_from_file_location(
        "baseline_checkpoints", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[spec.name])
    return importlib.import_module("baseline_checkpoints.snapshot")


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


def cpu_seconds():
    """User and system time of this process (all its threads) and of its children waited for."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def timed(function, source, cpu=None):
    """Seconds ``function`` takes, and its result, from the same start for every method: what earlier
    steps left is written back, and ``source`` (a file or a folder) is read into the page cache first,
    since the development VM pages out what has been idle for some seconds (DAMON's pageout scheme).
    The CPU seconds it took (all threads and processes, writeback by the kernel's own threads aside)
    are appended to ``cpu``: unlike the time, they hardly depend on what else runs on the machine."""
    os.sync()
    for path in [source] if source.is_file() else source.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.read_bytes()
    began, began_cpu = time.perf_counter(), cpu_seconds()
    result = function()
    if cpu is not None:
        cpu.append(cpu_seconds() - began_cpu)
    return time.perf_counter() - began, result


def tar_zstd(layer, archive):
    subprocess.run(f"tar -cf - -C {layer} . | zstd -3 -q -o {archive}", shell=True, check=True)
    return archive.stat().st_size


def untar_zstd(archive, target):
    subprocess.run(f"zstd -dcq {archive} | tar -xf - -C {target}", shell=True, check=True)


def measure(module, layer, scratch, rows):
    """One run of ``module``'s snapshots on a fresh store: first checkpoint, second after a 1 MiB change, restore."""
    store = LocalStore(scratch / "store")
    seconds, first = timed(lambda: module.take(layer, store), layer, rows["first_cpu"])
    rows["first"].append(seconds)
    rows["first_bytes"].append(first.stored_bytes)
    with open(layer / "model.bin", "r+b") as binary:
        binary.seek(20 * 2**20)
        binary.write(os.urandom(2**20))
    seconds, second = timed(lambda: module.take(layer, store, previous=first.manifest), layer)
    rows["second"].append(seconds)
    rows["second_bytes"].append(second.stored_bytes)
    target = scratch / "restored"
    target.mkdir()
    rows["restore"].append(
        timed(
            lambda: module.restore(target, store, second.manifest_key, second.manifest_sha256),
            store.root,
            rows["restore_cpu"],
        )[0]
    )


def measure_tar(layer, scratch, rows):
    archive = scratch / "layer.tar.zst"
    seconds, archived = timed(lambda: tar_zstd(layer, archive), layer, rows["first_cpu"])
    rows["first"].append(seconds)
    rows["first_bytes"].append(archived)
    rows["second"].append(seconds)  # a tar holds everything again
    rows["second_bytes"].append(archived)
    untarred = scratch / "untarred"
    untarred.mkdir()
    rows["restore"].append(timed(lambda: untar_zstd(archive, untarred), archive, rows["restore_cpu"])[0])


def main():
    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="checkpoint-bench-"))
    layer = work / "layer"
    size = prepare_layer(layer)
    files = sum(1 for f in layer.rglob("*") if f.is_file())
    columns = {"snapshots": lambda scratch, rows: measure(snapshot, layer, scratch, rows)}
    if BASELINE:
        before = baseline_snapshot()
        columns["before"] = lambda scratch, rows: measure(before, layer, scratch, rows)
    columns["tar | zstd -3"] = lambda scratch, rows: measure_tar(layer, scratch, rows)
    rows = {
        column: {
            name: []
            for name in ("first", "first_cpu", "first_bytes", "second", "second_bytes", "restore", "restore_cpu")
        }
        for column in columns
    }
    for run in range(RUNS):
        order = list(columns) if run % 2 == 0 else list(reversed(columns))
        for number, column in enumerate(order):
            scratch = work / f"run{run}-{number}"
            scratch.mkdir()
            columns[column](scratch, rows[column])
    mb = 2**20
    print(f"layer: {size / mb:.0f} MiB in {files} files; medians of {RUNS} runs, the columns interleaved")
    loads = (" ".join(f"{load:.2f}" for load in loads) for loads in (load_at_start, os.getloadavg()))
    print("load average (1, 5, 15 min) at the start: {}; at the end: {}".format(*loads))
    print(f"{'':32}" + "".join(f"{column:>30}" for column in columns))
    for name, label, scale, unit in (
        ("first", "first checkpoint, time", 1, "s"),
        ("first_cpu", "first checkpoint, CPU time", 1, "s"),
        ("first_bytes", "first checkpoint, stored", mb, "MiB"),
        ("second", "after changing 1 MiB, time", 1, "s"),
        ("second_bytes", "after changing 1 MiB, stored", mb, "MiB"),
        ("restore", "restore, time", 1, "s"),
        ("restore_cpu", "restore, CPU time", 1, "s"),
    ):
        medians = (f"{statistics.median(rows[column][name]) / scale:.2f} {unit}" for column in columns)
        print(f"{label:32}" + "".join(f"{median:>30}" for median in medians))
        if unit == "s":
            runs = (" ".join(f"{value:.2f}" for value in rows[column][name]) for column in columns)
            print(f"{'  (runs)':32}" + "".join(f"{run:>30}" if len(run) < 30 else f"  {run}" for run in runs))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
