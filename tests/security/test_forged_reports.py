"""Attack 6: end a studio without ending its container.

A ``failed`` report made the studio errored and forgot its session while the container kept running: a session
no one sees, stops or bills, with its layer still mounted, which can start again from the studio's page beside
it. Whatever a report says, a studio shows errored only once nothing of its session runs.
"""

import time

import httpx

from studios.models import StudioStatus

from .conftest import (
    container_id,
    container_processes,
    container_state,
    ide_processes,
    mounts_under,
    network_helpers,
    requires_isolation,
    session_folder,
    session_token,
    start,
    start_time,
    still_running,
    supervisor,
)

pytestmark = requires_isolation

# How long the platform may take to end the session before it shows the studio errored.
ENDING_TIMEOUT = 60


def test_a_forged_failed_report_leaves_nothing_running(world):
    studio = start(world)
    container, folder = container_id(studio), session_folder(studio)
    helpers, ide = network_helpers(studio), ide_processes(studio)
    owner = (supervisor(studio), start_time(supervisor(studio)))
    assert ide, "the studio's JupyterLab was not found on the host"
    report = httpx.post(
        f"{world.platform.url}/api/sessions/failed",
        json={"reason": "forged"},
        headers={"Authorization": f"Bearer {session_token(studio)}"},
        timeout=30,
    )
    deadline = time.monotonic() + (ENDING_TIMEOUT if report.status_code == 200 else 2)
    while True:
        studio.refresh_from_db()
        if studio.status == StudioStatus.ERRORED or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if studio.status != StudioStatus.ERRORED:
        # The report was refused: harmless, as long as the session carries on.
        assert studio.status == StudioStatus.RUNNING, f"a refused report left the studio {studio.status}"
        return
    # At the instant the studio shows errored:
    left = {
        "supervisor": still_running(*owner),
        "container": container_state(container),
        "IDE": [pid for pid, started in ide if still_running(pid, started)],
        "processes in its container": [pid for pid, _ in container_processes(container)],
        "network helpers": [pid for pid, started in helpers if still_running(pid, started)],
        "mounts": [point for point, _, _ in mounts_under(folder)],
    }
    left = {what: value for what, value in left.items() if value}
    assert left == {}, f"the studio shows errored while its session still runs: {left}"
