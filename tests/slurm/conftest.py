import os
import subprocess
from pathlib import Path

import pytest

from studios.models import ComputeEnvironment, Role
from studios.tasks import check_compute_environment

from ..factories import make_member, make_studio, make_workspace

CLUSTER = Path(__file__).resolve().parent / "cluster.sh"


def slurm(*command):
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local Slurm cluster (tests/slurm/cluster.sh): a controller and two nodes of 2 CPUs and 4096 MB."""
    subprocess.run([CLUSTER, "start"], check=True)
    os.environ["SLURM_CONF"] = f"{os.environ.get('STUDIOS_SLURM_DIR', '/var/lib/studios/slurm')}/slurm.conf"


@pytest.fixture
def cluster(slurm_cluster):
    """The cluster as each test finds it: no job of an earlier test, the partition up, both nodes idle."""
    yield
    slurm("scancel", "--partition=studios")
    slurm("scontrol", "update", "PartitionName=studios", "State=UP")
    for node in ("node1", "node2"):
        state = slurm("sinfo", "--noheader", f"--nodes={node}", "--format=%t").strip()
        if "drain" in state or "drng" in state or "down" in state:
            slurm("scontrol", "update", f"NodeName={node}", "State=RESUME")


def slurm_environment(workspace, work_dir, **fields):
    environment = ComputeEnvironment.objects.create(
        workspace=workspace,
        name="cluster",
        kind="slurm",
        partition="studios",
        work_dir=str(work_dir),
        max_cpus=2,
        max_memory_mb=2048,
        **fields,
    )
    check_compute_environment(environment.pk)
    environment.refresh_from_db()
    return environment


@pytest.fixture
def slurm_workspace(cluster, db, tmp_path):
    work_dir = tmp_path / "shared"
    work_dir.mkdir()
    workspace = make_workspace(work_dir=str(work_dir))
    return workspace, slurm_environment(workspace, work_dir)


def job_of(studio):
    """The id of the job the studio's session recorded, if any."""
    studio.refresh_from_db()
    return studio.session.handle.get("job_id") if studio.session else None


def on_cluster(workspace, environment, author, name):
    """A studio of 2 CPUs (a whole node) on the cluster."""
    return make_studio(
        workspace, name=name, author=author, compute_environment_id=environment.pk, cpus=2, memory_mb=1024
    )


@pytest.fixture
def studio_on_cluster(live_platform, slurm_workspace):
    """The live platform, a workspace with the cluster as its compute environment, and a member who may start."""
    workspace, environment = slurm_workspace
    user = make_member(workspace, Role.MAINTAIN)
    return workspace, environment, user
