"""Attack 4: new namespaces.

The container's seccomp filter refuses ``unshare`` and ``setns``, but a new namespace is also one flag of
``clone`` away, and ``clone3`` takes its flags in memory, where seccomp cannot read them. A new user namespace
gives root in it every capability, and with them mounts, raw network configuration and the kernel surface that
comes with them. Every namespace flag must be refused; ``clone3`` with it (ENOSYS: the C library then falls back
to ``clone``); a plain fork must still work.
"""

import json
import platform

import pytest

from .conftest import requires_isolation, run_as_tester, start

pytestmark = requires_isolation

NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
# What the tester found working: a user namespace, and in it the network and mount namespaces it owns.
NAMESPACE_FLAGS["CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS"] = (
    NAMESPACE_FLAGS["CLONE_NEWUSER"] | NAMESPACE_FLAGS["CLONE_NEWNET"] | NAMESPACE_FLAGS["CLONE_NEWNS"]
)
# clone's number; clone3 is 435 on both. The first two arguments (flags, new stack) are the same on both.
SYS_CLONE = {"x86_64": 56, "aarch64": 220}
SYS_CLONE3 = 435

# Raw system calls in a fresh, single-threaded Python (a kernel has threads, and CLONE_NEWUSER refuses a
# threaded caller): the child of a clone that succeeds exits at once, the parent reaps it. Prints one JSON object:
# {call: [return value, errno name]}.
PROBE = r"""
import ctypes, errno, json, os, signal
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = {}

def attempt(name, number, *arguments):
    ctypes.set_errno(0)
    child = libc.syscall(ctypes.c_long(number), *arguments)
    if child == 0:
        os._exit(0)
    error = ctypes.get_errno()
    if child > 0:
        os.waitpid(child, 0)
    results[name] = [child, errno.errorcode.get(error, str(error)) if child < 0 else '']

for name, flags in FLAGS.items():
    attempt(name, SYS_CLONE, ctypes.c_ulong(flags | signal.SIGCHLD), ctypes.c_ulong(0), ctypes.c_ulong(0),
            ctypes.c_ulong(0), ctypes.c_ulong(0))

# struct clone_args (version 0, 64 bytes): flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls.
arguments = (ctypes.c_uint64 * 8)(FLAGS['CLONE_NEWUSER'], 0, 0, 0, signal.SIGCHLD, 0, 0, 0)
attempt('clone3(CLONE_NEWUSER)', SYS_CLONE3, ctypes.byref(arguments), ctypes.c_size_t(ctypes.sizeof(arguments)))
attempt('fork', SYS_CLONE, ctypes.c_ulong(signal.SIGCHLD), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
        ctypes.c_ulong(0))
print(json.dumps(results))
"""


def test_a_session_can_open_no_namespace_with_clone_or_clone3(world):
    machine = platform.machine()
    if machine not in SYS_CLONE:
        pytest.skip(f"no clone numbers for {machine}")
    studio = start(world)
    probe = f"FLAGS = {NAMESPACE_FLAGS!r}\nSYS_CLONE = {SYS_CLONE[machine]}\nSYS_CLONE3 = {SYS_CLONE3}\n" + PROBE
    printed = run_as_tester(
        world,
        studio,
        f"import subprocess, sys\nprobe = subprocess.run([sys.executable, '-c', {probe!r}], capture_output=True, text=True, "
        "timeout=30)\nprint(probe.stdout.strip() or probe.stderr.strip()[-2000:])",
    )
    results = json.loads(printed)
    opened = {name: result for name, result in results.items() if name in NAMESPACE_FLAGS and result[1] != "EPERM"}
    assert opened == {}, (
        f"clone with namespace flags was not refused with EPERM ([return value, errno]): {opened}; all: {results}"
    )
    assert results["clone3(CLONE_NEWUSER)"][1] in ("ENOSYS", "EPERM"), f"clone3 was not refused: {results}"
    assert results["fork"][0] > 0, f"a plain fork no longer works: {results['fork']}"
