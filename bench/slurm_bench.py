"""Start-to-running of a JupyterLab studio on the local Slurm cluster (tests/slurm/cluster.sh: a controller and
two nodes on this machine) versus on the local compute environment, same run, alternating; both from the same
template image.

Runs the whole product (``manage.py runstudios`` on embedded defaults in a temporary data dir), adds a Slurm
compute environment on partition ``studios`` to the demo workspace, and starts a studio on each RUNS times, timing
Start (the POST) to ``running``; each first start (the image's pull and unpack into a fresh cache) is reported on
its own. Needs `make images` first. Usage: .venv/bin/python bench/slurm_bench.py [RUNS]
"""

import os
import statistics
import subprocess
import sys
import tempfile

from demo_platform import ROOT, DemoUser, demo_platform, setup_django
from image_bench import alternate

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def main():
    subprocess.run([ROOT / "tests/slurm/cluster.sh", "start"], check=True)
    os.environ["SLURM_CONF"] = f"{os.environ.get('STUDIOS_SLURM_DIR', '/var/lib/studios/slurm')}/slurm.conf"
    with demo_platform(STUDIOS_LOCAL_ISOLATION="auto") as (base, password, env):
        setup_django(env)
        from studios.models import ComputeEnvironment, Workspace
        from studios.tasks import check_compute_environment

        cluster = ComputeEnvironment.objects.create(
            workspace=Workspace.objects.get(slug="analysis"),
            name="cluster",
            kind="slurm",
            partition="studios",
            work_dir=tempfile.mkdtemp(prefix="studios-bench-shared-"),
            max_cpus=2,
            max_memory_mb=2048,
        )
        check_compute_environment(cluster.pk)
        cluster.refresh_from_db()
        assert cluster.status == "available", cluster.status_reason
        user = DemoUser(base, "maintain", password)
        studios = {
            "slurm": (user, user.add_studio("on-slurm", environment=cluster.pk)),
            "local": (user, user.add_studio("local")),
        }
        times = alternate(studios, RUNS)

    difference = statistics.median(times["slurm"]) - statistics.median(times["local"])
    print(f"Slurm adds {difference:+.2f} s to the median start")


if __name__ == "__main__":
    main()
