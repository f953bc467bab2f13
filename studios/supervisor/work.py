"""Whether a session's IDE is working, for the platform's idle stop: a studio is idle only when no member used it
and its IDE did no work. The supervisor looks from outside the sandbox every ``work_check_seconds`` and reports
``working`` when it saw work since its last look.

- JupyterLab: the server's own API, through the gate: a kernel busy now, or a kernel or terminal active (its
  ``last_activity``: a kernel's messages, a terminal's output) since the last look. A cell computing for hours keeps
  its kernel busy, so it is never idle.
- VS Code and RStudio, which have no such API: the CPU time of the session's cgroup, above ``CPU_THRESHOLD`` of one CPU
  over the period (terminals, builds, R or Python processes).

What cannot be seen counts as work: a plain process (no container) has no cgroup of its own, and an IDE may not
answer. Such a studio is never stopped for idleness, rather than risk stopping a long computation.

What the IDE answers is the session's to say, and the session is hostile: it may claim work it does not do. The
platform believes only that the studio should keep running, which costs the workspace that runs it and nobody else.
"""

import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# A session whose processes used less than this share of one CPU over the period did no work.
CPU_THRESHOLD = 0.05
JUPYTER_PATHS = ("api/kernels", "api/terminals")


def cgroup_cpu_seconds(container_id: str) -> float | None:
    """The CPU time the container's processes used, in seconds; None when it has no cgroup to read."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/studios/{container_id}/cpuacct.usage")
    v2 = Path(f"/sys/fs/cgroup/studios/{container_id}/cpu.stat")
    try:
        if v1.exists():
            return int(v1.read_text()) / 1e9
        for line in v2.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        return None
    return None


@dataclass
class WorkWatch:
    """What the last look saw, to tell new work from old. ``url``: the gate's address with the IDE's base path;
    ``container_id``: empty for a plain process."""

    template: str
    url: str
    token: str
    container_id: str = ""
    seen_activity: str = ""  # the newest ``last_activity`` JupyterLab reported
    cpu: tuple[float, float] | None = None  # (monotonic time, CPU seconds) at the last look
    cpu_spent: float = field(default=0.0)  # this process's CPU time spent looking, for the session's log
    looks: int = 0

    def working(self) -> bool:
        began = time.thread_time()
        try:
            return self._jupyter() if self.template == "jupyterlab" else self._cpu()
        finally:
            self.cpu_spent += time.thread_time() - began
            self.looks += 1

    def _jupyter(self) -> bool:
        busy, newest, answered = False, self.seen_activity, False
        for path in JUPYTER_PATHS:
            request = urllib.request.Request(self.url + path, headers={"X-Studios-Session-Token": self.token})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    items = json.loads(response.read())
            except (OSError, ValueError):
                continue  # the IDE does not answer now: nothing seen
            if not isinstance(items, list):
                continue
            answered = True
            for item in items:
                if not isinstance(item, dict):
                    continue
                busy = busy or item.get("execution_state") == "busy"
                activity = item.get("last_activity")
                if isinstance(activity, str) and activity > newest:  # ISO 8601 in UTC: compares as text
                    newest = activity
        active = newest != self.seen_activity and bool(self.seen_activity)
        self.seen_activity = newest
        return busy or active or not answered

    def _cpu(self) -> bool:
        used = cgroup_cpu_seconds(self.container_id) if self.container_id else None
        if used is None:
            return True
        now = time.monotonic()
        before, self.cpu = self.cpu, (now, used)
        return before is not None and (used - before[1]) / max(now - before[0], 1e-3) >= CPU_THRESHOLD
