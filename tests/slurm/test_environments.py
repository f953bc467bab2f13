"""Slurm compute environments: added by workspace admins, checked against the real (local) cluster."""

import pytest

from studios.models import ComputeEnvironment, Role
from studios.tasks import check_compute_environment

from ..factories import make_member
from ..live import wait_until
from .conftest import slurm

pytestmark = pytest.mark.django_db


def checked(environment):
    check_compute_environment(environment.pk)
    environment.refresh_from_db()
    return environment.status, environment.status_reason


def test_a_partition_that_can_run_sessions_makes_the_environment_available(slurm_workspace):
    _, environment = slurm_workspace
    assert (environment.status, environment.status_reason) == ("available", "")


def test_a_partition_that_is_down_or_whose_nodes_are_drained_makes_it_invalid_until_fixed(slurm_workspace):
    _, environment = slurm_workspace
    slurm("scontrol", "update", "PartitionName=studios", "State=DOWN")
    status, reason = checked(environment)
    assert status == "invalid"
    assert reason == "Partition studios is down; ask the cluster's administrators to bring it up."

    slurm("scontrol", "update", "PartitionName=studios", "State=UP")
    for node in ("node1", "node2"):
        slurm("scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=disk replacement")
    status, reason = checked(environment)
    assert status == "invalid"
    assert "No node of partition studios can run a session" in reason
    assert "disk replacement" in reason

    for node in ("node1", "node2"):
        slurm("scontrol", "update", f"NodeName={node}", "State=RESUME")
    # The controller takes a moment to offer resumed nodes again.
    wait_until(lambda: checked(environment) == ("available", ""), 10, "the environment to be available again", 0.5)


def test_a_missing_partition_or_studios_larger_than_its_nodes_make_it_invalid(slurm_workspace, tmp_path):
    _, environment = slurm_workspace
    environment.partition = "gpu"
    environment.save()
    assert checked(environment) == ("invalid", "Slurm has no partition gpu.")

    environment.partition, environment.max_cpus = "studios", 16
    environment.save()
    status, reason = checked(environment)
    assert status == "invalid"
    assert "Studios here may ask for 16 CPUs, but the largest node of partition studios has 2" in reason

    environment.max_cpus, environment.max_memory_mb = 2, 8192
    environment.save()
    status, reason = checked(environment)
    assert "has 4096 MB; lower the most memory a studio may ask for" in reason

    environment.max_memory_mb, environment.work_dir = 2048, str(tmp_path / "not-there")
    environment.save()
    status, reason = checked(environment)
    assert status == "invalid"
    assert "does not exist on the platform's host" in reason


def test_an_admin_adds_a_slurm_environment_and_bad_input_changes_nothing(slurm_workspace, client, tmp_path):
    workspace, _ = slurm_workspace
    admin = make_member(workspace, Role.ADMIN)
    url = f"/w/{workspace.organization.slug}/{workspace.slug}/compute/add/slurm/"
    client.force_login(admin)
    page = client.get(url)
    assert page.status_code == 200
    assert b"Add Slurm compute environment" in page.content

    bad = {
        "name": "hpc",
        "partition": "studios; rm -rf /",
        "work_dir": "shared/studios",
        "writable_data_paths": "/shared/results\n../up",
        "max_cpus": 2,
        "max_memory_mb": 2048,
    }
    response = client.post(url, bad)
    assert response.status_code == 400
    text = response.content.decode()
    assert "Enter the partition&#x27;s name as Slurm knows it" in text
    assert "Enter an absolute folder of the cluster&#x27;s shared filesystem" in text
    assert "Not an absolute folder of the shared filesystem: ../up." in text
    assert not ComputeEnvironment.objects.filter(name="hpc").exists()

    work_dir = tmp_path / "hpc"
    work_dir.mkdir()
    good = {**bad, "partition": "studios", "work_dir": str(work_dir), "writable_data_paths": "/shared/results"}
    response = client.post(url, good)
    assert response.status_code == 302
    environment = ComputeEnvironment.objects.get(name="hpc")
    assert (environment.kind, environment.partition, environment.writable_data_paths) == (
        "slurm",
        "studios",
        ["/shared/results"],
    )
    assert checked(environment) == ("available", "")
    assert not environment.has_credentials

    # A work directory on S3, with the key pair the jobs reach it with (kept sealed, never shown back).
    on_s3 = {**good, "name": "hpc-s3", "work_dir": "s3://hpc-work/studios"}
    response = client.post(url, {**on_s3, "access_key_id": "AKIASLURMNODES00001"})
    assert response.status_code == 400
    assert "Enter both the access key ID and the secret access key." in response.content.decode()
    response = client.post(url, {**on_s3, "access_key_id": "AKIASLURMNODES00001", "secret_access_key": "s3cret"})
    assert response.status_code == 302
    environment = ComputeEnvironment.objects.get(name="hpc-s3")
    assert environment.work_dir == "s3://hpc-work/studios"
    assert environment.aws_credentials() == {
        "aws_access_key_id": "AKIASLURMNODES00001",
        "aws_secret_access_key": "s3cret",
    }
    assert b"s3cret" not in client.get(f"{url.removesuffix('add/slurm/')}{environment.pk}/").content
    assert checked(environment) == ("available", "")


def test_only_workspace_admins_may_add_one(slurm_workspace, client):
    workspace, _ = slurm_workspace
    maintainer = make_member(workspace, Role.MAINTAIN)
    client.force_login(maintainer)
    url = f"/w/{workspace.organization.slug}/{workspace.slug}/compute/add/slurm/"
    assert client.get(url).status_code == 403
    response = client.post(url, {"name": "sneaky", "partition": "studios", "work_dir": "/tmp", "max_cpus": 2})
    assert response.status_code == 403
    assert not ComputeEnvironment.objects.filter(name="sneaky").exists()
