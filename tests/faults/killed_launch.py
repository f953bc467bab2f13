"""A worker killed in the middle of a launch, at an exact point: this process runs the real launch task and dies
by SIGKILL, as a worker killed by the kernel or an operator does, at the point named on its command line:

- ``before-launch``: the session's plan (what it will create) is recorded, nothing is created yet;
- ``before-recorded``: the session's compute is started (its supervisor on this host, its Slurm or AWS Batch job
  submitted), and the task has not recorded that it was.

Usage: python -m tests.faults.killed_launch SESSION_ID POINT
"""

import os
import signal
import sys
from unittest import mock

import django

django.setup()

from studios import lifecycle, tasks  # noqa: E402  (needs Django set up)
from studios.backends.local import LocalBackend  # noqa: E402


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


RECORD_LAUNCH = lifecycle.record_launch


def record_unless_launched(session_id, handle, launched=False, planned=None):
    """``record_launch`` for the plan; death for the launch."""
    if launched:
        die()
    return RECORD_LAUNCH(session_id, handle, launched, planned)


if __name__ == "__main__":
    session_id, point = int(sys.argv[1]), sys.argv[2]
    if point == "before-launch":
        mock.patch.object(LocalBackend, "launch", die).start()
    else:
        mock.patch.object(lifecycle, "record_launch", record_unless_launched).start()
    tasks.launch_session(session_id)
    sys.exit("the launch finished: it was meant to be killed")
