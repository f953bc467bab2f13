"""moto's AWS Batch, made to behave like Batch where the tests need it.

moto runs a submitted job in Docker (there is no Docker engine here) or, with
``use_docker: False``, marks it SUCCEEDED the moment it is submitted. Neither is what Batch
does, so these tests do not let moto execute anything: a submitted job waits in SUBMITTED, as
real jobs wait for capacity, and the test moves it through Batch's states by setting them on
moto's own job object, which is what ``describe_jobs`` then returns. ``terminate_job`` ends the
job as Batch does: the container gets SIGTERM (``on_terminate``), and the job becomes FAILED
with the reason given once it has exited. moto reports every compute environment VALID;
``make_invalid`` makes it report one INVALID, as Batch does when, say, its instance role is gone.

moto never places a job on an instance either: ``place`` does what Batch does when it starts one. It
launches an EC2 instance in the compute environment's subnet, registers it in the environment's ECS
cluster, and gives the job that container instance, which moto's ``describe_jobs`` then reports. The
instance's private address is this host's (``host_address``), where the test's stand-in for the Batch
host listens; the queue's subnet is this host's network so that EC2 accepts that address.
"""

import ipaddress
import json
import uuid

import boto3
from moto.batch.models import BatchBackend, Job, batch_backends
from moto.batch_simple.models import BatchSimpleBackend
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.config import default_user_config

from studios import lifecycle, tasks

from .conftest import host_address

REGION = "eu-west-1"


class MotoBatch:
    def __init__(self, monkeypatch, region=REGION):
        self.region = region
        self.on_terminate = {}  # job id -> called with the job in place of the container getting SIGTERM
        self.invalid = {}  # compute environment name -> Batch's statusReason
        self.placed = {}  # job id -> the ARN of the container instance it runs on
        self.instance_arn = None  # the one container instance jobs are placed on
        monkeypatch.setitem(default_user_config, "batch", {"use_docker": False})
        monkeypatch.setattr(BatchSimpleBackend, "_mark_job_as_finished", _leave_submitted)
        monkeypatch.setattr(Job, "terminate", lambda job, reason: self._terminate(job, reason))
        details = Job._container_details
        monkeypatch.setattr(Job, "_container_details", lambda job: self._with_instance(job, details(job)))
        described = BatchBackend.describe_compute_environments
        monkeypatch.setattr(
            BatchBackend,
            "describe_compute_environments",
            lambda backend, environments=None: [self._with_status(e) for e in described(backend, environments)],
        )

    def _with_instance(self, job, details):
        if job.job_id in self.placed:
            details["containerInstanceArn"] = self.placed[job.job_id]
        return details

    def _with_status(self, environment):
        if environment["computeEnvironmentName"] in self.invalid:
            environment.update(status="INVALID", statusReason=self.invalid[environment["computeEnvironmentName"]])
        return environment

    def make_invalid(self, environment_name, reason):
        self.invalid[environment_name] = reason

    @property
    def client(self):
        return boto3.client("batch", region_name=self.region)

    def _terminate(self, job, reason):
        if job.job_stopped:
            return
        job.job_stopped_reason = reason
        if job.job_id in self.on_terminate:
            self.on_terminate.pop(job.job_id)(job)
        else:
            job._mark_stopped(success=False)

    def queue(self, name):
        return batch_backends[DEFAULT_ACCOUNT_ID][self.region].get_job_queue(name)

    def job(self, job_id):
        return batch_backends[DEFAULT_ACCOUNT_ID][self.region].get_job_by_id(job_id)

    def set_state(self, job_id, status, reason=None):
        """Move a job to ``status`` as Batch would report it; FAILED and SUCCEEDED end it."""
        job = self.job(job_id)
        if reason is not None:
            job.job_stopped_reason = reason
        if status in ("SUCCEEDED", "FAILED"):
            job._mark_stopped(success=status == "SUCCEEDED")
        else:
            job.status = status

    def place(self, job_id, queue="studios"):
        """Start the job on an instance of the queue's first compute environment, as Batch does before STARTING."""
        if self.instance_arn is None:
            order = self.client.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"]
            environment = self.client.describe_compute_environments(
                computeEnvironments=[min(order, key=lambda entry: entry["order"])["computeEnvironment"]]
            )["computeEnvironments"][0]
            instance = boto3.client("ec2", region_name=self.region).run_instances(
                ImageId="ami-03cf127a",
                MinCount=1,
                MaxCount=1,
                SubnetId=environment["computeResources"]["subnets"][0],
                PrivateIpAddress=host_address(),
            )["Instances"][0]
            document = json.dumps({"instanceId": instance["InstanceId"]})
            self.instance_arn = boto3.client("ecs", region_name=self.region).register_container_instance(
                cluster=environment["ecsClusterArn"], instanceIdentityDocument=document
            )["containerInstance"]["containerInstanceArn"]
        self.placed[job_id] = self.instance_arn

    def describe(self, job_id):
        return self.client.describe_jobs(jobs=[job_id])["jobs"][0]

    def make_queue(self, name="studios", *, state="ENABLED", environments=(("studios-ec2", "EC2", "ENABLED"),)):
        """A job queue over compute environments given as (name, type, state), with what they need in IAM and EC2."""
        iam, ec2 = boto3.client("iam", region_name=self.region), boto3.client("ec2", region_name=self.region)
        service_role = iam.create_role(RoleName=f"{name}-batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        instance_role = iam.create_instance_profile(InstanceProfileName=f"{name}-ecs")["InstanceProfile"]["Arn"]
        network = str(ipaddress.ip_network(f"{host_address()}/24", strict=False))
        vpc = ec2.create_vpc(CidrBlock=network)["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=network)["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=f"{name}-sessions", Description="sessions", VpcId=vpc)["GroupId"]
        order = []
        for position, (environment, kind, environment_state) in enumerate(environments, start=1):
            resources = {"type": kind, "maxvCpus": 64, "subnets": [subnet], "securityGroupIds": [group]}
            if not kind.startswith("FARGATE"):
                resources.update(minvCpus=0, instanceTypes=["optimal"], instanceRole=instance_role)
            arn = self.client.create_compute_environment(
                computeEnvironmentName=environment,
                type="MANAGED",
                state=environment_state,
                computeResources=resources,
                serviceRole=service_role,
            )["computeEnvironmentArn"]
            order.append({"order": position, "computeEnvironment": arn})
        self.client.create_job_queue(jobQueueName=name, state=state, priority=1, computeEnvironmentOrder=order)
        return name


def _leave_submitted(backend, include_start_attempt, job):
    backend.backend._jobs[job.job_id] = job


def environment_of(job_description):
    """The environment a described job's container gets: what the job definition and the submission set."""
    return {variable["name"]: variable["value"] for variable in job_description["container"]["environment"]}


# A studio's session on it, as the tests drive it: started, placed, reporting.


def launch(user, studio):
    """Start the studio and run the start task: its job is submitted."""
    lifecycle.start_studio(user, studio)
    studio.refresh_from_db()
    tasks.launch_session(studio.session.pk)
    studio.refresh_from_db()
    return studio


READY_STEPS = [
    {"name": "Provisioning compute", "state": "succeeded", "message": ""},
    {"name": "Starting JupyterLab", "state": "succeeded", "message": ""},
]


def report(client, studio, kind, body):
    """A report from the job's supervisor, with its token: the platform's answer."""
    authorization = f"Bearer {studio.session.token}"
    return client.post(f"/api/sessions/{kind}", json.dumps(body), "application/json", HTTP_AUTHORIZATION=authorization)


def report_ready(client, studio):
    """What the supervisor sends once its IDE answers; it says nothing of where it is."""
    assert report(client, studio, "ready", {"steps": READY_STEPS}).status_code == 200
    studio.refresh_from_db()
    return studio


def manifest_key(studio_id):
    """A key a supervisor may report a checkpoint's manifest under: in the studio's own folder of the store."""
    return f"manifests/studio-{studio_id}/{uuid.uuid4().hex}.json.zst"


def run_job(aws, studio):
    """Batch places the job on its instance and runs it; the platform finds it there on its next reconcile."""
    aws.place(job_id(studio))
    aws.set_state(job_id(studio), "RUNNING")
    tasks.reconcile_sessions()
    studio.refresh_from_db()
    return studio


def addresses(studio):
    """Where the backend says the session's gate and control endpoint are: this host, the job's instance."""
    handle = studio.session.handle
    return f"http://{host_address()}:{handle['port']}", f"http://{host_address()}:{handle['control_port']}"


def job_id(studio):
    return studio.session.handle["job_id"]
