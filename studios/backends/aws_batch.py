"""The AWS Batch backend: a session is a Batch job whose container runs the session supervisor.

Each template image gets a job definition, named after the template and the image's tag, registered once
and reused (a new revision when the image or the container's properties change); the studio's CPUs and
memory and the session's configuration (``protocol.SessionConfig``, as environment variables) are set per
job when it is submitted. Batch's job states become start-up progress, and its failure reasons become
sentences a user can act on.

The job's container runs privileged, and the supervisor sandboxes the IDE inside it the same way as on a
local host (``isolation="container"``, the image's own root filesystem below the session's writable layer;
the image brings runc, slirp4netns, mkfs.ext4 and rclone). Not "process": the IDE would then run beside the
supervisor as the same user, free to read the token from its environment and to end it, and S3 datasets,
the only kind a Batch compute environment has, are mounted for a sandbox only. The privilege is the
supervisor's (loop-mounted layers, runc); the IDE gets the sandbox's capabilities and seccomp filter. Its network
(slirp4netns, which connects from the instance's own network) has no route to link-local addresses, where the
instance metadata service and ECS's credentials endpoint would give it the instance role (the whole work
directory), and it may not change its routes (``sandbox.connect_network``).

Batch runs EC2 jobs with host networking: the supervisor's gate and control endpoint listen on the
instance's own address, on ports the platform chooses when it plans the session (at random below Linux's
ephemeral range; one already taken on the instance fails that start with the job's exit, and the next start
draws others). Where the instance is, only the backend says, never a report: once the job is RUNNING,
its container instance (ECS) leads to its EC2 instance and that instance's private address.

What each action calls, hence the IAM actions the platform needs:

- ``environment_problem``: batch:DescribeJobQueues, batch:DescribeComputeEnvironments.
- ``plan``: nothing.
- ``launch``: batch:DescribeJobDefinitions (a page per 100 revisions), batch:RegisterJobDefinition when the
  image is new, batch:SubmitJob (batch:TagResource for its tags).
- ``poll``: batch:DescribeJobs; for a RUNNING job on a container instance this worker has not located yet,
  ecs:DescribeContainerInstances and ec2:DescribeInstances (once per instance: its private address never
  changes).
- ``terminate``: batch:TerminateJob, then batch:DescribeJobs every 2 s until the job has ended; for a session whose
  job's id was never recorded, batch:ListJobs first.
- ``recover``: batch:ListJobs (when the job's id was never recorded).
- ``start_timeout_hint``: batch:DescribeJobs.

Each start's job is named after the session's container (``studio-<id>-<random>``), which the plan records before
the job is submitted: a worker killed after SubmitJob returned and before it recorded the job's id leaves a job the
platform finds again by that name (``recover``), to adopt rather than submit a second one, or to terminate when the
session ends.

No secret is in the job: whoever may call batch:DescribeJobs (or ListJobs, or read the job's CloudTrail events)
reads its environment and command. In place of the session token, the job's environment carries a start ticket
(``protocol.TICKET``) that the supervisor redeems for the token over the platform's URL (HTTPS in production) before
it starts anything. The platform keeps only the ticket's SHA-256, in the handle; a ticket is good once, while its
session starts, and a second redemption ends that start (whoever redeemed it first may hold the token). The ticket
is an HMAC of the session's name on the instance under the session token: each launch draws a new name, hence a
new ticket, and nothing besides the token needs keeping to submit the job.

Credentials are the compute environment's access key pair or, without one, boto3's default chain (the
platform's own role); ``AWS_ENDPOINT_URL`` points boto3 at another endpoint (moto). The job itself gets no
credentials: the supervisor reaches S3 with the role of the instance it runs on.
"""

import hmac
import json
import os
import random
import re
import secrets
import time
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..supervisor.protocol import SUPERVISOR_COMMAND, TICKET, TOKEN, ticket_sha256
from .base import BackendError, SchedulerBackend, SessionSpec, SessionState

CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
# A job definition's own resources; every job replaces them with its studio's.
DEFAULT_RESOURCES = [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]
# What the job needs besides the studio's memory, which is the sandbox's limit: the supervisor, its gate,
# slirp4netns and the datasets' rclone mounts.
SUPERVISOR_MEMORY_MB = 512
# Where the gate and the control endpoint may listen on the instance: below Linux's ephemeral ports
# (32768-60999), which the instance's own outgoing connections use.
PORTS = range(20000, 32768)
# Passed on to the session so that it uses the same AWS endpoints as the platform (never credentials).
FORWARDED_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
TERMINATE_POLL_SECONDS = 2
# Container instance ARN -> its EC2 instance's private address, which never changes: each is looked up once
# per worker process.
INSTANCE_ADDRESSES: dict[str, str] = {}

# What a job in each state before RUNNING is waiting for.
PROVISIONING = {
    "SUBMITTED": "queued",
    "PENDING": "waiting to be scheduled",
    "RUNNABLE": "waiting for an instance with room for it in the compute environment",
    "STARTING": "pulling the image and starting the container",
    "RUNNING": "starting the session supervisor",
}
ENDED = {"SUCCEEDED", "FAILED"}

# RStudio Server has never run a session here (it is not in Debian, and its image was never built).
TEMPLATE_PROBLEMS = {
    "rstudio": "RStudio Server is not offered on AWS Batch yet: its image (images/rstudio) has not been "
    "verified on Batch.",
}

# Batch's reasons for a failed job, most specific first: (pattern, what to tell the user).
FAILURES = [
    (
        re.compile(r"OutOfMemoryError|killed due to memory", re.I),
        "The session ran out of memory (limit {memory_mb} MB) and AWS Batch ended it; changes since the last "
        "checkpoint may be lost. Start it again with more memory.",
    ),
    (
        re.compile(r"CannotPullContainer|pull image|manifest unknown", re.I),
        "AWS Batch could not pull the session image: {text}. Check that the image exists in its registry and "
        "that the compute environment's instances may pull it (ECR pull permission on the instance or "
        "execution role, a network route to the registry).",
    ),
    (
        re.compile(r"AccessDenied|not authorized|UnauthorizedOperation|permission", re.I),
        "AWS Batch reported a permissions problem: {text}. Check the IAM roles of the compute environment "
        "(its instance role and the job's execution role).",
    ),
    (
        re.compile(r"Host EC2 .*terminated|Spot", re.I),
        "The instance running the session went away: {text}. AWS may reclaim Spot instances at any time; "
        "changes since the last checkpoint may be lost. Start the studio again.",
    ),
    (
        re.compile(r"CannotStartContainer|CannotCreateContainer|CannotInspectContainer|ResourceInitialization", re.I),
        "AWS Batch could not start the session's container: {text}. Check the image (its platform and "
        "command) and the instance's free disk space.",
    ),
]


def job_definition_name(template: str, image: str) -> str:
    """``studios-<template>-<tag>``: one job definition per template image and version."""
    reference = image.rsplit("/", 1)[-1]
    if "@" in reference:
        version = reference.split("@", 1)[1].replace("sha256:", "")[:12]
    else:
        version = reference.split(":", 1)[1] if ":" in reference else "latest"
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"studios-{template}-{version}")[:128]


def start_ticket(token: str, container: str) -> str:
    """The start ticket of the session named ``container`` on its instance (see the module's docstring)."""
    return hmac.new(token.encode(), f"start ticket {container}".encode(), "sha256").hexdigest()


def tag_value(value: object) -> str:
    """AWS tag values allow letters, digits, spaces and _.:/=+-@, up to 256 characters."""
    return re.sub(r"[^\w .:/=+\-@]", "_", str(value))[:256]


def _canonical(value: object) -> object:
    """Compare lists regardless of order: Batch may return environment variables in another order."""
    if isinstance(value, list):
        return sorted(json.dumps(item, sort_keys=True) for item in value)
    return value


def _unsuitable_kind(environment: dict[str, Any]) -> str:
    """FARGATE, FARGATE_SPOT or EKS for a Batch compute environment that cannot run sessions, else ""."""
    kind: str = environment.get("computeResources", {}).get("type", "EC2")
    if kind.startswith("FARGATE"):
        return kind
    return "EKS" if environment.get("containerOrchestrationType") == "EKS" else ""


def ended_reason(job: dict[str, Any], memory_mb: int) -> str:
    """Why a job ended, in words a user can act on: Batch's own reason, translated where we know it."""
    container = job.get("container") or {}
    attempts = job.get("attempts") or []
    reasons: list[str | None] = [job.get("statusReason"), container.get("reason")]
    reasons += [attempt.get("container", {}).get("reason") for attempt in attempts]
    reasons += [attempt.get("statusReason") for attempt in attempts]
    texts = [text for text in reasons if text]
    for pattern, message in FAILURES:
        matched = next((text for text in texts if pattern.search(text)), None)
        if matched:
            return message.format(text=matched.rstrip("."), memory_mb=memory_mb)
    if job["status"] == "SUCCEEDED":
        return "The session ended on its own (its AWS Batch job SUCCEEDED). Start the studio again."
    exit_code = container.get("exitCode")
    log_stream = container.get("logStreamName")
    return (
        f"The AWS Batch job failed: {texts[0] if texts else 'no reason given'}"
        f"{f' (exit code {exit_code})' if exit_code is not None else ''}."
        f"{f' Its log is the CloudWatch stream {log_stream}.' if log_stream else ''} Start the studio again."
    )


class AwsBatchBackend(SchedulerBackend):
    def __init__(self, *, region: str, job_queue: str, credentials: dict[str, str], images: dict[str, str]) -> None:
        self.region = region
        self.job_queue = job_queue
        self.credentials = credentials  # boto3 keyword arguments; empty for the default chain
        self.images = images

    @cached_property
    def session(self) -> Any:
        return boto3.session.Session(region_name=self.region, **self.credentials)

    @cached_property
    def client(self) -> Any:
        return self.session.client("batch", config=CLIENT_CONFIG)

    def template_problem(self, template: str) -> str:
        return TEMPLATE_PROBLEMS.get(template, "")

    def environment_problem(self) -> str:
        queue_name = self.job_queue
        try:
            queues = self.client.describe_job_queues(jobQueues=[queue_name])["jobQueues"]
            if not queues:
                return f"Job queue {queue_name} does not exist in {self.region}, or these credentials cannot see it."
            queue = queues[0]
            if queue["state"] != "ENABLED":
                return f"Job queue {queue_name} is {queue['state']}; enable it in AWS Batch."
            if queue["status"] != "VALID":
                return f"Job queue {queue_name} is {queue['status']}: {queue.get('statusReason', 'no reason given')}."
            order = sorted(queue.get("computeEnvironmentOrder", []), key=lambda entry: entry["order"])
            if not order:
                return f"Job queue {queue_name} has no compute environments."
            environments = self.client.describe_compute_environments(
                computeEnvironments=[entry["computeEnvironment"] for entry in order]
            )["computeEnvironments"]
        except (BotoCoreError, ClientError) as error:
            return f"Cannot check job queue {queue_name} in {self.region}: {error}"
        unsuitable = [
            f"{environment['computeEnvironmentName']} ({kind})"
            for environment in environments
            if (kind := _unsuitable_kind(environment))
        ]
        if unsuitable:
            return (
                f"Job queue {queue_name} runs on {', '.join(unsuitable)}; studios need EC2 or Spot compute "
                "environments orchestrated by ECS, not Fargate or EKS."
            )
        if not any(e["state"] == "ENABLED" and e["status"] == "VALID" for e in environments):
            states = "; ".join(
                f"{e['computeEnvironmentName']} is {e['state']} and {e['status']}"
                + (f" ({e['statusReason']})" if e.get("statusReason") and e["status"] != "VALID" else "")
                for e in environments
            )
            return (
                f"No compute environment of job queue {queue_name} is ENABLED and VALID: {states}. "
                "Enable or repair one in AWS Batch."
            )
        return ""

    def _container_properties(self, image: str) -> dict[str, Any]:
        # Privileged for the supervisor, which loop-mounts the session's layer and runs the IDE under runc.
        return {
            "image": image,
            "command": SUPERVISOR_COMMAND,
            "resourceRequirements": DEFAULT_RESOURCES,
            "privileged": True,
        }

    def _job_definition(self, template: str) -> str:
        """The ARN of an active job definition for the template's image: an existing one, else a new revision."""
        image = self.images[template]
        name = job_definition_name(template, image)
        wanted = self._container_properties(image)
        pages = self.client.get_paginator("describe_job_definitions").paginate(jobDefinitionName=name, status="ACTIVE")
        for page in pages:
            for definition in page["jobDefinitions"]:
                existing = definition.get("containerProperties", {})
                if all(_canonical(existing.get(key)) == _canonical(value) for key, value in wanted.items()):
                    arn: str = definition["jobDefinitionArn"]
                    return arn
        registered: str = self.client.register_job_definition(
            jobDefinitionName=name,
            type="container",
            containerProperties=wanted,
            platformCapabilities=["EC2"],
            propagateTags=True,
            tags={"studios:template": template},
        )["jobDefinitionArn"]
        return registered

    def plan(self, spec: SessionSpec) -> dict[str, Any]:
        """The session's name on the instance and its ports; where the instance is, Batch decides later.
        The name is unique per start: runc's cgroups may be the instance's, shared with other jobs."""
        port, control_port = random.sample(PORTS, 2)
        container = f"{spec.name}-{secrets.token_hex(4)}"
        return {
            "container": container,
            "port": port,
            "control_port": control_port,
            "cpus": spec.cpus,
            "memory_mb": spec.memory_mb,
            "ticket_sha256": ticket_sha256(start_ticket(spec.token, container)),
        }

    def job_environment(self, spec: SessionSpec, handle: dict[str, Any]) -> list[dict[str, str]]:
        job = spec.job(
            container_id=handle["container"],
            port=handle["port"],
            control_port=handle["control_port"],
            bind_host="0.0.0.0",  # the platform's proxy reaches the gate from another host
        )
        environment = {
            **{name: value for name, value in job.environment.items() if name != TOKEN},
            TICKET: start_ticket(spec.token, handle["container"]),
            "AWS_DEFAULT_REGION": self.region,
            **{name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)},
        }
        return [{"name": name, "value": value} for name, value in environment.items()]

    def launch(self, spec: SessionSpec, handle: dict[str, Any]) -> dict[str, Any]:
        try:
            job = self.client.submit_job(
                jobName=handle["container"],
                jobQueue=self.job_queue,
                jobDefinition=self._job_definition(spec.template),
                containerOverrides={
                    "environment": self.job_environment(spec, handle),
                    "resourceRequirements": [
                        {"type": "VCPU", "value": str(spec.cpus)},
                        {"type": "MEMORY", "value": str(spec.memory_mb + SUPERVISOR_MEMORY_MB)},
                    ],
                },
                tags={f"studios:{key}": tag_value(value) for key, value in spec.labels.items()},
                propagateTags=True,
            )
        except (BotoCoreError, ClientError) as error:
            raise BackendError(f"AWS Batch did not accept the job on queue {self.job_queue}: {error}") from None
        return {**handle, "job_id": job["jobId"]}

    def _submitted(self, handle: dict[str, Any]) -> str:
        """The id of the planned job, on the queue and not ended, or "". Of jobs of that name, the first submitted:
        the name is unknown to anyone else until the platform's job exists."""
        if "container" not in handle:
            return ""
        name = [{"name": "JOB_NAME", "values": [handle["container"]]}]
        try:
            pages = self.client.get_paginator("list_jobs").paginate(jobQueue=self.job_queue, filters=name)
            jobs = [job for page in pages for job in page["jobSummaryList"] if job["status"] not in ENDED]
        except (BotoCoreError, ClientError) as error:
            raise BackendError(f"Cannot list the AWS Batch jobs of queue {self.job_queue}: {error}") from None
        return str(min(jobs, key=lambda job: job["createdAt"])["jobId"]) if jobs else ""

    def _describe(self, job_id: str) -> dict[str, Any] | None:
        try:
            jobs = self.client.describe_jobs(jobs=[job_id])["jobs"]
        except (BotoCoreError, ClientError) as error:
            raise BackendError(f"Cannot read AWS Batch job {job_id}: {error}") from None
        return jobs[0] if jobs else None

    def _instance_address(self, job: dict[str, Any]) -> str:
        """The private address of the EC2 instance a job runs on, or "" while Batch does not say which it is."""
        arn = (job.get("container") or {}).get("containerInstanceArn", "")
        if not arn or arn in INSTANCE_ADDRESSES:
            return INSTANCE_ADDRESSES.get(arn, "")
        # arn:aws:ecs:<region>:<account>:container-instance/<cluster>/<id>, ECS's long format, names the cluster.
        cluster = arn.partition(":container-instance/")[2].rpartition("/")[0]
        if not cluster:
            raise BackendError(
                f"its container instance ARN {arn} does not name its cluster; turn on ECS's long ARN format"
            )
        try:
            found = self.session.client("ecs", config=CLIENT_CONFIG).describe_container_instances(
                cluster=cluster, containerInstances=[arn]
            )["containerInstances"]
            if not found:
                return ""
            ec2 = self.session.client("ec2", config=CLIENT_CONFIG)
            reservations = ec2.describe_instances(InstanceIds=[found[0]["ec2InstanceId"]])["Reservations"]
        except (BotoCoreError, ClientError) as error:
            raise BackendError(str(error)) from None
        address = next((i.get("PrivateIpAddress", "") for r in reservations for i in r["Instances"]), "")
        if address:
            INSTANCE_ADDRESSES[arn] = address
        return address

    def poll(self, handle: dict[str, Any]) -> SessionState:
        if "job_id" not in handle:
            return SessionState(alive=True, progress="Submitting the AWS Batch job")
        job = self._describe(handle["job_id"])
        if job is None:
            return SessionState(
                alive=False, reason=f"The AWS Batch job {handle['job_id']} no longer exists. Start the studio again."
            )
        status = job["status"]
        if status == "RUNNING":
            try:
                host = self._instance_address(job)
            except BackendError as error:
                return SessionState(alive=True, progress=f"AWS Batch job RUNNING: cannot locate its instance: {error}")
            if not host:
                return SessionState(alive=True, progress="AWS Batch job RUNNING: locating its instance")
            return SessionState(
                alive=True,
                progress=f"AWS Batch job RUNNING: {PROVISIONING['RUNNING']}",
                endpoint=f"http://{host}:{handle['port']}",
                control=f"http://{host}:{handle['control_port']}",
            )
        if status in PROVISIONING:
            return SessionState(alive=True, progress=f"AWS Batch job {status}: {PROVISIONING[status]}")
        return SessionState(alive=False, reason=ended_reason(job, handle["memory_mb"]))

    def stop(self, handle: dict[str, Any]) -> None:
        """Batch sends the container SIGTERM (the supervisor saves a final checkpoint), then SIGKILL."""
        job_id = self._job_id(handle)
        if not job_id:
            return
        try:
            self.client.terminate_job(jobId=job_id, reason="Stopped from Studios")
        except (BotoCoreError, ClientError) as error:
            if self._describe(job_id) is not None:
                raise BackendError(f"AWS Batch did not terminate job {job_id}: {error}") from None

    def terminate(self, handle: dict[str, Any], timeout: float) -> None:
        """Stop the job and wait up to ``timeout`` for it to end."""
        job_id = self._job_id(handle)
        if not job_id:
            return
        self.stop({**handle, "job_id": job_id})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self._describe(job_id)
            if job is None or job["status"] in ENDED:
                return
            time.sleep(TERMINATE_POLL_SECONDS)

    def start_timeout_hint(self, handle: dict[str, Any]) -> str:
        state = ""
        if handle.get("job_id"):
            try:
                job = self._describe(handle["job_id"])
            except BackendError:
                job = None
            if job is not None:
                state = f"Its AWS Batch job is still {job['status']}. "
        return (
            f"{state}Check that the compute environments of job queue {self.job_queue} are ENABLED and VALID "
            "and have capacity"
            + (f" for {handle['cpus']} vCPUs and {handle['memory_mb']} MB" if handle else "")
            + " (their maximum vCPUs and instance types)."
        )
