"""Attack 5: escape the quota, reach other studios' checkpoints, and leave files on the host that others can use.

Today the compute environment's work dir (every studio's checkpoints) is bind-mounted writable into every
session: a session writes past its layer's quota there, reads and rewrites other studios' checkpoints (and so
plants the manifests of attack 2). The sandbox must hold no work dir. And what a session makes in its layer
lives on the host's disk: a setuid-root file there must be inert for the host's users, the session's folder
(its bundle holds the token) closed to them, its mounts nosuid and nodev.
"""

import json
import os
import stat
from pathlib import Path

from checkpoints.models import Checkpoint

from ..live import session_supervisor, wait_until
from .conftest import (
    effective_uid_as_nobody,
    mounts_under,
    requires_isolation,
    run_as_tester,
    session_folder,
    session_token,
    setuid_files_exposed,
    start,
)

pytestmark = requires_isolation

WORK_DIR_PROBE = r"""
import errno, json, os
result = {}
try:
    with open(os.path.join(WORK, 'planted-by-a-session'), 'w') as planted:
        planted.write('beyond the quota')
    result['write'] = 'written'
except OSError as error:
    result['write'] = errno.errorcode.get(error.errno, str(error.errno))
listing = []
for directory, _, files in os.walk(os.path.join(WORK, '.studios/checkpoints')):
    listing += [os.path.relpath(os.path.join(directory, name), WORK) for name in files]
result['listing'] = listing
try:
    with open(os.path.join(WORK, '.studios/checkpoints', OTHER), 'rb') as manifest:
        result['other'] = f'read {len(manifest.read())} bytes'
except OSError as error:
    result['other'] = errno.errorcode.get(error.errno, str(error.errno))
print(json.dumps(result))
"""


def first_manifest(studio):
    """The key of the first checkpoint a running studio saved (at its start)."""
    checkpoint = Checkpoint.objects.filter(studio=studio).exclude(manifest_key="").first()
    return checkpoint.manifest_key if checkpoint else None


def test_a_session_cannot_write_the_work_dir_or_read_other_studios_checkpoints(world):
    other = start(world)
    other_manifest = wait_until(lambda: first_manifest(other), 60, "the other studio's first checkpoint")
    studio = start(world)
    probe = f"WORK = {str(world.work_dir)!r}\nOTHER = {other_manifest!r}\n" + WORK_DIR_PROBE
    result = json.loads(run_as_tester(world, studio, probe))
    problems = []
    if result["write"] not in ("ENOENT", "EROFS", "EACCES") or (world.work_dir / "planted-by-a-session").exists():
        problems.append(f"it writes into the compute environment's work dir, past its layer's quota: {result['write']}")
    if result["listing"]:
        problems.append(f"it lists the checkpoint store ({len(result['listing'])} files): {result['listing'][:3]}")
    if result["other"] not in ("ENOENT", "EACCES"):
        problems.append(f"it reads another studio's manifest {other_manifest}: {result['other']}")
    assert problems == [], "a session reaches the work dir:\n" + "\n".join(problems)


def test_a_setuid_file_made_in_a_session_gives_no_one_root_on_the_host(world):
    studio = start(world)
    printed = run_as_tester(
        world,
        studio,
        "import os, shutil\nshutil.copy('/usr/bin/id', '/root/suid-id')\nos.chmod('/root/suid-id', 0o4755)\n"
        "os.chmod('/root', 0o755)  # the way in, for whoever looks from the host\n"
        "print(oct(os.stat('/root/suid-id').st_mode))",
    )
    assert printed == "0o104755"
    copies = setuid_files_exposed(studio, relative_paths=["root/suid-id"])
    assert copies, "the setuid file was not found in any view of the session's folder"
    as_nobody = {path: effective_uid_as_nobody(path) for path in copies}
    assert not [path for path, uid in as_nobody.items() if uid == "0"], (
        f"a setuid-root file made in the session runs as root for the user nobody on the host: {as_nobody}"
    )


def test_the_session_folder_is_closed_to_other_users_and_its_mounts_are_nosuid_and_nodev(world):
    """The session's mounts live only in its supervisor's mount namespace: none shows on the host. There, the layer
    (the session's own files) is nosuid and nodev; the root built on it is nodev, and keeps setuid for the session's
    own users inside the container (RStudio Server's user has sudo), which no one outside can reach."""
    studio = start(world)
    folder, token = session_folder(studio), session_token(studio).encode()
    problems = []
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode != 0o700:
        problems.append(f"the session folder {folder} is mode {mode:o}, not 700")
    for directory, subdirectories, files in os.walk(folder):
        # Not into the layer or the root: the session's own files (and, below the root, the host's).
        subdirectories[:] = [name for name in subdirectories if not os.path.ismount(os.path.join(directory, name))]
        for name in files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if (
                stat.S_ISREG(info.st_mode)
                and info.st_size < 2**20
                and token in Path(path).read_bytes()
                and mode != 0o600
            ):
                problems.append(f"{path} holds the session token and is mode {mode:o}, not 600")
    for point, kind, _ in mounts_under(folder):
        problems.append(f"{point} ({kind}) is mounted on the host")
    pid, seen = session_supervisor(studio.session.handle)
    own = mounts_under(seen, pid)
    if not own:
        problems.append("the supervisor's mount namespace has none of the session's mounts")
    for point, kind, options in own:
        wanted = ("nosuid", "nodev") if kind != "overlay" else ("nodev",)
        missing = [option for option in wanted if option not in options]
        if missing:
            problems.append(f"{point} ({kind}) is mounted without {' and '.join(missing)}: {','.join(options)}")
    assert problems == [], "the session's files on the host are open to other users:\n" + "\n".join(problems)
