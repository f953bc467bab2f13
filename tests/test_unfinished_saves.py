"""A JupyterLab save cut short (its server stopped or killed halfway) never reaches a checkpoint half written: the
supervisor puts the file back as it was last saved (studios/supervisor/saves.py). The saves here are Jupyter's own
code, killed with SIGKILL at the point named."""

import json
import os
import signal
import subprocess
import sys

from studios.supervisor.saves import JUPYTER_COPY_PREFIX, undo_unfinished

SAVED = json.dumps({"cells": [{"cell_type": "code", "source": "print(45)"}], "nbformat": 4}, indent=1)

# Jupyter's file manager saving ``path``, killed once the point named has been reached: "rewrite" when half of the new
# content is in the file, "copy" when its copy of the file is made but not yet dated.
CUT_SHORT_SAVE = """
import os, shutil, signal, sys
from jupyter_server.services.contents.fileio import atomic_writing

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

path, point = sys.argv[1:]
if point == "copy":
    shutil.copystat = killed
with atomic_writing(path) as f:
    f.write('{"cells": [{"cell_type": "code", "source": "print(4')
    f.flush()
    killed()
"""


def cut_short(path, point):
    run = subprocess.run([sys.executable, "-c", CUT_SHORT_SAVE, str(path), point], capture_output=True)
    assert run.returncode == -signal.SIGKILL, run.stderr


def test_a_rewrite_cut_short_is_put_back_as_last_saved(tmp_path):
    notebook = tmp_path / "workspace" / "analysis.ipynb"
    notebook.parent.mkdir()
    notebook.write_text(SAVED)
    cut_short(notebook, "rewrite")
    assert notebook.read_text().startswith('{"cells": [{"cell_type": "code", "source": "print(4')
    assert (notebook.parent / ".~analysis.ipynb").exists()

    assert undo_unfinished(tmp_path, JUPYTER_COPY_PREFIX, ()) == ["workspace/analysis.ipynb"]
    assert notebook.read_text() == SAVED
    assert sorted(os.listdir(notebook.parent)) == ["analysis.ipynb"]


def test_a_copy_cut_short_is_removed_and_the_file_kept(tmp_path):
    notebook = tmp_path / "analysis.ipynb"
    notebook.write_text(SAVED)
    cut_short(notebook, "copy")
    assert (tmp_path / ".~analysis.ipynb").exists()

    assert undo_unfinished(tmp_path, JUPYTER_COPY_PREFIX, ()) == []
    assert notebook.read_text() == SAVED
    assert os.listdir(tmp_path) == ["analysis.ipynb"]


def test_nothing_else_in_the_layer_is_touched(tmp_path):
    layer, outside = tmp_path / "layer", tmp_path / "outside"
    layer.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("host's")
    (outside / ".~secret").write_text("session's")
    os.utime(outside / ".~secret", ns=(0, 0))
    # What a hostile session may leave: a folder linked out of the layer holding an old copy, a copy that is a link
    # out, a file that is a link, a copy without its file, and files excluded from checkpoints.
    (layer / "linked").symlink_to(outside)
    (layer / "passwd").write_text("mine")
    (layer / ".~passwd").symlink_to("/etc/passwd")
    (layer / "notes").symlink_to(outside / "secret")
    (layer / ".~notes").write_text("old")
    os.utime(layer / ".~notes", ns=(0, 0))
    (layer / ".~alone").write_text("a file of its own")
    (layer / "data").mkdir()
    (layer / "data" / "table.csv").write_text("new")
    (layer / "data" / ".~table.csv").write_text("old")
    os.utime(layer / "data" / ".~table.csv", ns=(0, 0))
    before = state(layer, outside)

    assert undo_unfinished(layer, JUPYTER_COPY_PREFIX, ("data",)) == []
    assert state(layer, outside) == before


def state(*folders):
    """Every link's target and every file's content below ``folders`` (links not followed)."""
    paths = [path for folder in folders for path in folder.rglob("*")]
    return {
        path: os.readlink(path) if path.is_symlink() else path.read_text()
        for path in paths
        if path.is_symlink() or path.is_file()
    }
