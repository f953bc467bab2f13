"""The AWS Batch backend: a session is a Batch job whose container runs the session agent.

Each template image gets a job definition, named after the template and the image's tag,
registered once and reused (a new revision when the image changes); the studio's CPUs, memory
and the session's environment are set per job when it is submitted. On the job's host the
agent listens on every interface, reports the address it reaches the platform from, and accepts
only requests carrying the session token. Batch's job states become start-up progress, and its
failure reasons become sentences a user can act on.

Credentials are the compute environment's access key pair or, without one, boto3's default
chain (the platform's own role); ``AWS_ENDPOINT_URL`` points boto3 at another endpoint (moto).
The job itself gets no credentials: the agent reaches S3 with the role of the instance it runs on.
"""

import json
import os
import re
import time
from functools import cached_property

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .base import BackendError, ComputeBackend, SessionSpec, SessionState

CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
AGENT_COMMAND = ["python", "-m", "studios.agent"]
# A job definition's own resources; every job replaces them with its studio's.
DEFAULT_RESOURCES = [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]
# Passed on to the session so that it uses the same AWS endpoints as the platform (never credentials).
FORWARDED_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
TERMINATE_POLL_SECONDS = 2

# What a job in each state before RUNNING is waiting for.
PROVISIONING = {
    "SUBMITTED": "queued",
    "PENDING": "waiting to be scheduled",
    "RUNNABLE": "waiting for an instance with room for it in the compute environment",
    "STARTING": "pulling the image and starting the container",
    "RUNNING": "starting the session agent",
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


def job_definition_name(template, image):
    """``studios-<template>-<tag>``: one job definition per template image and version."""
    reference = image.rsplit("/", 1)[-1]
    if "@" in reference:
        version = reference.split("@", 1)[1].replace("sha256:", "")[:12]
    else:
        version = reference.split(":", 1)[1] if ":" in reference else "latest"
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"studios-{template}-{version}")[:128]


def tag_value(value):
    """AWS tag values allow letters, digits, spaces and _.:/=+-@, up to 256 characters."""
    return re.sub(r"[^\w .:/=+\-@]", "_", str(value))[:256]


def _canonical(value):
    """Compare lists regardless of order: Batch may return environment variables in another order."""
    if isinstance(value, list):
        return sorted(json.dumps(item, sort_keys=True) for item in value)
    return value


def _unsuitable_kind(environment):
    """FARGATE, FARGATE_SPOT or EKS for a Batch compute environment that cannot run sessions, else ""."""
    kind = environment.get("computeResources", {}).get("type", "EC2")
    if kind.startswith("FARGATE"):
        return kind
    return "EKS" if environment.get("containerOrchestrationType") == "EKS" else ""


def ended_reason(job, memory_mb):
    """Why a job ended, in words a user can act on: Batch's own reason, translated where we know it."""
    container = job.get("container") or {}
    attempts = job.get("attempts") or []
    texts = [job.get("statusReason"), container.get("reason")]
    texts += [attempt.get("container", {}).get("reason") for attempt in attempts]
    texts += [attempt.get("statusReason") for attempt in attempts]
    texts = [text for text in texts if text]
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


class AwsBatchBackend(ComputeBackend):
    def __init__(self, *, region, job_queue, credentials, images, container_home):
        self.region = region
        self.job_queue = job_queue
        self.credentials = credentials  # boto3 keyword arguments; empty for the default chain
        self.images = images
        self.container_home = container_home

    @cached_property
    def client(self):
        session = boto3.session.Session(region_name=self.region, **self.credentials)
        return session.client("batch", config=CLIENT_CONFIG)

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

    def _container_properties(self, image):
        return {"image": image, "command": AGENT_COMMAND, "resourceRequirements": DEFAULT_RESOURCES}

    def _job_definition(self, template):
        """The ARN of an active job definition for the template's image: an existing one, else a new revision."""
        image = self.images[template]
        name = job_definition_name(template, image)
        wanted = self._container_properties(image)
        pages = self.client.get_paginator("describe_job_definitions").paginate(jobDefinitionName=name, status="ACTIVE")
        for page in pages:
            for definition in page["jobDefinitions"]:
                existing = definition.get("containerProperties", {})
                if all(_canonical(existing.get(key)) == _canonical(value) for key, value in wanted.items()):
                    return definition["jobDefinitionArn"]
        return self.client.register_job_definition(
            jobDefinitionName=name,
            type="container",
            containerProperties=wanted,
            platformCapabilities=["EC2"],
            propagateTags=True,
            tags={"studios:template": template},
        )["jobDefinitionArn"]

    def job_environment(self, spec: SessionSpec):
        environment = {
            **spec.environment(),
            "HOME": self.container_home,
            # The platform's proxy connects to the session from another host; the token guards it.
            "STUDIOS_BIND_HOST": "0.0.0.0",
            "AWS_DEFAULT_REGION": self.region,
            **{name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)},
        }
        return [{"name": name, "value": value} for name, value in environment.items()]

    def launch(self, spec: SessionSpec) -> dict:
        try:
            job = self.client.submit_job(
                jobName=spec.name,
                jobQueue=self.job_queue,
                jobDefinition=self._job_definition(spec.template),
                containerOverrides={
                    "environment": self.job_environment(spec),
                    "resourceRequirements": [
                        {"type": "VCPU", "value": str(spec.cpus)},
                        {"type": "MEMORY", "value": str(spec.memory_mb)},
                    ],
                },
                tags={f"studios:{key}": tag_value(value) for key, value in spec.labels.items()},
                propagateTags=True,
            )
        except (BotoCoreError, ClientError) as error:
            raise BackendError(f"AWS Batch did not accept the job on queue {self.job_queue}: {error}") from None
        return {"job_id": job["jobId"], "cpus": spec.cpus, "memory_mb": spec.memory_mb}

    def _describe(self, job_id):
        try:
            jobs = self.client.describe_jobs(jobs=[job_id])["jobs"]
        except (BotoCoreError, ClientError) as error:
            raise BackendError(f"Cannot read AWS Batch job {job_id}: {error}") from None
        return jobs[0] if jobs else None

    def poll(self, handle: dict) -> SessionState:
        job = self._describe(handle["job_id"])
        if job is None:
            return SessionState(
                alive=False, reason=f"The AWS Batch job {handle['job_id']} no longer exists. Start the studio again."
            )
        status = job["status"]
        if status in PROVISIONING:
            return SessionState(alive=True, progress=f"AWS Batch job {status}: {PROVISIONING[status]}")
        return SessionState(alive=False, reason=ended_reason(job, handle["memory_mb"]))

    def terminate(self, handle: dict, timeout: float) -> None:
        """Batch sends the container SIGTERM (the agent saves a final checkpoint), then SIGKILL; wait for the end."""
        job_id = handle.get("job_id")
        if not job_id:
            return
        try:
            self.client.terminate_job(jobId=job_id, reason="Stopped from Studios")
        except (BotoCoreError, ClientError) as error:
            if self._describe(job_id) is not None:
                raise BackendError(f"AWS Batch did not terminate job {job_id}: {error}") from None
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self._describe(job_id)
            if job is None or job["status"] in ENDED:
                return
            time.sleep(TERMINATE_POLL_SECONDS)

    def start_timeout_hint(self, handle: dict) -> str:
        state = ""
        if handle:
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
