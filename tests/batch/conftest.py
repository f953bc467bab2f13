"""An AWS Batch compute environment on moto in-process, and a studio on it."""

import pytest
from moto import mock_aws

from studios import tasks
from studios.models import ComputeEnvironment, Role

from ..factories import make_studio
from ..moto_batch import REGION, MotoBatch


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "platform-role")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-role")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    batch = MotoBatch(monkeypatch)
    with mock_aws():
        yield batch


@pytest.fixture
def environment(workspace, aws):
    aws.make_queue()
    environment = ComputeEnvironment.objects.create(
        workspace=workspace,
        name="batch",
        kind="aws-batch",
        region=REGION,
        job_queue="studios",
        work_dir="s3://lab-work/studios",
        writable_data_paths=["s3://lab-results/"],
        max_cpus=16,
    )
    tasks.check_compute_environment(environment.pk)
    environment.refresh_from_db()
    return environment


@pytest.fixture
def maintainer(members):
    return members[Role.MAINTAIN]


@pytest.fixture
def studio(workspace, environment, maintainer):
    return make_studio(
        workspace, name="rnaseq", author=maintainer, compute_environment_id=environment.pk, cpus=4, memory_mb=4096
    )
