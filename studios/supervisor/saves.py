"""Saves an IDE did not finish, undone before a checkpoint keeps them.

JupyterLab saves a file by copying it to ``.~<name>`` beside it, rewriting the file in place, then removing the copy.
An IDE stopped or killed halfway (a stop that outlasts a save, a session that runs out of memory) leaves the copy
behind, and the file maybe half written: a notebook that no longer opens. The copy tells which half was cut short:

- it is older than the file (the copy takes the file's time as its last step): the rewrite was cut short, and the
  copy holds the file as last saved. The copy is put back in the file's place (should the rewrite have just ended,
  a few system calls before the copy's removal, that save is lost, never half of it);
- it is not: the copy was cut short, and the file was not touched yet. The copy is removed.

Either way the file is as it was last saved, never half written, and no copy is left to be judged again later.

The layer is the session's and so is everything in it: it may have made any of these names itself. Nothing is
followed (the layer is walked by folder descriptors, names never resolved through a link), and a rename within one
folder only changes the session's own files, which it could have changed itself.
"""

import os
import stat
from collections.abc import Collection
from pathlib import Path

from checkpoints import snapshot

JUPYTER_COPY_PREFIX = ".~"


def undo_unfinished(layer: Path, prefix: str, excluded: Collection[str]) -> list[str]:
    """Undo the saves that left a copy named ``prefix`` + a file's name in ``layer``; the files put back as they were
    last saved (their paths in the layer)."""
    put_back = []
    layer_fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for relative, name, listed, folder_fd in snapshot.walk(layer_fd, set(excluded)):
            original = name.removeprefix(prefix)
            if listed is None or original in ("", name) or not listed.is_file(follow_symlinks=False):
                continue
            try:
                copy = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                file = os.stat(original, dir_fd=folder_fd, follow_symlinks=False)
                if not (stat.S_ISREG(copy.st_mode) and stat.S_ISREG(file.st_mode)):
                    continue
                if copy.st_mtime_ns < file.st_mtime_ns:
                    os.rename(name, original, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
                    put_back.append(relative.removesuffix(name) + original)
                else:
                    os.unlink(name, dir_fd=folder_fd)
            except FileNotFoundError:  # the copy without its file is not one of a save
                continue
    finally:
        os.close(layer_fd)
    return put_back
