"""Attack 1: the session token is readable inside the session.

Whoever holds a session's token speaks for the session to the platform (reports readiness, failure,
checkpoints). Code in the session must find it nowhere: not in any process's environment or command line, not
in any file the session can read.
"""

import json

from .conftest import requires_isolation, run_as_tester, session_token, start

pytestmark = requires_isolation

# Files bigger than this are not read: other sessions' sparse layer images in the host's /tmp are gigabytes, and
# nothing the platform writes to hand a token over is that big.
LARGEST_FILE = 32 * 2**20

# The token arrives reversed, so that the scanning code itself (in the kernel's memory, in the request that
# carried it) never holds it as it is.
SCAN = r"""
import json, os, stat
token = TOKEN_REVERSED[::-1].encode()
found, skipped, read = [], [], 0

def holds(path):
    with open(path, 'rb') as f:
        tail = b''
        while True:
            block = f.read(1 << 20)
            if not block:
                return False
            if token in tail + block:
                return True
            tail = block[-len(token):]

for pid in os.listdir('/proc'):
    if pid.isdigit():
        for name in ('environ', 'cmdline'):
            path = f'/proc/{pid}/{name}'
            try:
                if holds(path):
                    found.append(path)
            except OSError:
                pass

for root in ROOTS:
    if not os.path.isdir(root):
        continue
    for directory, subdirectories, files in os.walk(root):
        if directory == '/workspace' and 'data' in subdirectories:
            subdirectories.remove('data')  # the datasets: the member's own data, not the platform's
        for name in files:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    continue
                if info.st_size > LARGEST_FILE:
                    skipped.append(path)
                    continue
                read += 1
                if holds(path):
                    found.append(path)
            except OSError:
                pass
print(json.dumps({'found': found, 'read': read, 'skipped': len(skipped)}))
"""


def test_the_session_token_is_nowhere_inside_the_session(world):
    studio = start(world)
    token = session_token(studio)
    # Not the whole disk, and never /var/lib/postgresql: until sessions get real images (a later issue), the host's
    # whole / is the container's lower layer, and PostgreSQL's data files there hold every session's token.
    roots = ["/run", "/tmp", "/root", "/workspace", "/etc", "/.studios", "/opt/studios", str(world.work_dir)]
    code = f"TOKEN_REVERSED = {token[::-1]!r}\nROOTS = {roots!r}\nLARGEST_FILE = {LARGEST_FILE}\n" + SCAN
    scan = json.loads(run_as_tester(world, studio, code))
    assert scan["read"] > 100, f"the scan read too little to mean anything: {scan}"
    assert scan["found"] == [], f"code in the session reads the session token in: {', '.join(scan['found'])}"
