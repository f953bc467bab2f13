"""The Slurm backend: a session is a Slurm batch job whose process is the session supervisor.

The platform's host is a submit host of the cluster: it runs ``sbatch``, ``scontrol``, ``sinfo`` and
``scancel`` (which cluster: Slurm's own configuration, ``SLURM_CONF`` or ``/etc/slurm/slurm.conf``). A start
submits a job to the compute environment's partition (and account and QOS, when set) asking for the studio's CPUs
and its memory plus the supervisor's; the job's node runs the supervisor, which runs the IDE in the same sandbox as
on a local host (the template's image unpacked on the node below a fresh writable layer, cgroup limits, datasets
mounted) and keeps its checkpoints in the compute environment's work directory: a folder of the cluster's shared
filesystem, or ``s3://bucket/prefix`` (then the job reaches S3 with the compute environment's access key pair, or
with the node's own AWS identity when it has none).

The session token (and the key pair) never appear where other users of the cluster look: ``scontrol show job``
shows a job's command, working directory and output paths to every user, so the job's configuration travels in its
batch script (given to ``sbatch`` on its standard input), which Slurm shows only to the job's owner (the platform's
user) and the cluster's administrators. The script writes it to a file of the job's folder on the node (0600), and
the session's host reads the file and removes it before it starts anything.

The gate and the control endpoint listen on the node's address, on ports the platform draws when it plans the
session (as on AWS Batch: one already taken on the node fails that start, and the next draws others). Where the
node is, only Slurm says: once the job runs, ``scontrol`` names its node and the node's address.

Each start's job is named after the session's container (``studio-<id>-<random>``), which the plan records before
``sbatch`` runs: a worker killed after ``sbatch`` returned and before it recorded the job's id leaves a job the
platform finds again by that name (``squeue --me --name``) and its comment, which names the work directory and the
session (another user of the cluster may name a job as they like), to adopt rather than submit a second one
(``recover``), or to cancel when the session ends (``terminate``). The reconcile's sweep cancels a job of the work
directory that no live session names (``inventory``, ``sweep``): one whose start was retried while ``sbatch`` had
not returned yet, or whose studio's row is gone.
"""

import json
import os
import random
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..supervisor.protocol import CONFIG_FILE
from .aws_batch import PORTS, SUPERVISOR_MEMORY_MB
from .base import BackendError, SchedulerBackend, SessionSpec, SessionState
from .local import host_environment, image_problem

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT = 30
TERMINATE_POLL_SECONDS = 1
# The folder of a work directory on the shared filesystem that holds each session's log (on S3, the log stays on
# the node, in /tmp).
SPOOL = ".studios-jobs"
# The platform's AWS endpoints and region, passed on to jobs that reach S3 (never its credentials).
FORWARDED_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Why a job waits, by Slurm's reason code, in words a user can act on.
PENDING_REASONS = {
    "Resources": "waiting for a node with {cpus} CPUs and {memory_mb} MB free in partition {partition}",
    "Priority": "waiting behind jobs of higher priority in partition {partition}",
    "Dependency": "waiting for another job to finish",
    "QOSMaxJobsPerUserLimit": "you already run as many jobs as your QOS allows; stop another studio",
    "QOSMaxCpuPerUserLimit": "your running jobs already use as many CPUs as your QOS allows; stop another studio",
    "QOSMaxMemoryPerUser": "your running jobs already use as much memory as your QOS allows; stop another studio",
    "AssocMaxJobsLimit": "your account already runs as many jobs as it may; stop another studio",
    "ReqNodeNotAvail": "the nodes it may run on are down, drained or reserved; ask the cluster's administrators",
    "PartitionDown": "partition {partition} is down; ask the cluster's administrators",
    "PartitionInactive": "partition {partition} is inactive; ask the cluster's administrators",
    "PartitionNodeLimit": "it asks for more than partition {partition} allows",
    "BeginTime": "waiting for its start time",
    "JobHeldAdmin": "held by the cluster's administrators",
    "JobHeldUser": "held (release it with scontrol release)",
}
# How each way a job ends reads, by Slurm's state.
ENDED_STATES = {
    "COMPLETED": "The session's Slurm job {job_id} ended on its own. Start the studio again.",
    "CANCELLED": "The session's Slurm job {job_id} was cancelled outside Studios (scancel). Start the studio again; "
    "its last checkpoint is kept.",
    "FAILED": "The session's Slurm job {job_id} failed (exit code {exit_code}). Start the studio again; its last "
    "checkpoint is kept.",
    "TIMEOUT": "The session's Slurm job {job_id} reached its time limit and Slurm ended it. Start the studio again.",
    "NODE_FAIL": "The node running the session ({node}) failed. Start the studio again; its last checkpoint is kept.",
    "OUT_OF_MEMORY": "The session ran out of memory (limit {memory_mb} MB) and Slurm ended it. Start it again with "
    "more memory.",
    "PREEMPTED": "Slurm preempted the session's job for a job of higher priority. Start the studio again; its last "
    "checkpoint is kept.",
    "BOOT_FAIL": "The node for the session's Slurm job failed to boot. Start the studio again.",
    "DEADLINE": "The session's Slurm job reached its deadline. Start the studio again.",
}
WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"}
ENDING = {"COMPLETING", "STAGE_OUT", "SIGNALING"}


def run(*command: str, check: bool = True, input: str | None = None) -> str:
    """A Slurm command's output (``input`` on its standard input); BackendError with Slurm's own message when it
    fails or cannot run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, input=input)
    except FileNotFoundError:
        raise BackendError(
            f"{command[0]} is not installed on the platform's host: it must be a Slurm submit host."
        ) from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{command[0]} did not answer in {COMMAND_TIMEOUT} s: is slurmctld running?") from None
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).strip().removeprefix(f"{command[0]}: ").replace("error: ", "")
        raise BackendError(message or f"{command[0]} failed with exit code {done.returncode}")
    return done.stdout


def fields_of(line: str) -> dict[str, str]:
    """``scontrol -o``'s one-line ``Key=Value Key=Value`` record as a dict (values never hold spaces there, except
    the last ones, which this does not read)."""
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


class SlurmBackend(SchedulerBackend):
    def __init__(
        self,
        *,
        partition: str,
        account: str,
        qos: str,
        work_dir: str,
        credentials: dict[str, str],
        images: dict[str, str],
        image_cache: str,
        max_cpus: int,
        max_memory_mb: int,
    ) -> None:
        """``credentials``: the AWS key pair jobs reach S3 with ({} for the nodes' own identity); ``image_cache``:
        where nodes unpack images (a folder of each node's own disk, the same path on all); ``max_cpus``,
        ``max_memory_mb``: the most a studio may ask for here, which some node must have."""
        self.partition = partition
        self.account = account
        self.qos = qos
        self.work_dir = work_dir
        self.credentials = credentials
        self.images = images
        self.image_cache = image_cache
        self.max_cpus = max_cpus
        self.max_memory_mb = max_memory_mb

    @property
    def on_s3(self) -> bool:
        return self.work_dir.startswith("s3://")

    def _placement(self) -> list[str]:
        options = [f"--partition={self.partition}"]
        if self.account:
            options.append(f"--account={self.account}")
        if self.qos:
            options.append(f"--qos={self.qos}")
        return options

    def template_problem(self, template: str) -> str:
        reference = self.images.get(template, "")
        if not reference:
            return "No image is named for it in this compute environment."
        return image_problem(template, reference)

    def environment_problem(self) -> str:
        """The partition exists, is up, has a node that can take work and one that can take the largest studio
        allowed here; the account and QOS are accepted (``sbatch --test-only``)."""
        if not self.on_s3 and not Path(self.work_dir).is_dir():
            return f"The work directory {self.work_dir} does not exist on the platform's host; it must be a folder of the cluster's shared filesystem."
        try:
            lines = run("sinfo", "--noheader", f"--partition={self.partition}", "--format=%a|%t|%c|%m|%D").split()
        except BackendError as error:
            return f"Cannot ask Slurm about partition {self.partition}: {error}"
        if not lines:
            return f"Slurm has no partition {self.partition}."
        rows = [line.split("|") for line in lines]
        if rows[0][0] != "up":
            return f"Partition {self.partition} is {rows[0][0]}; ask the cluster's administrators to bring it up."
        usable = [row for row in rows if not re.match(r"(down|drain|drng|fail|maint|boot|unk|inval)", row[1])]
        if not usable:
            states = ", ".join(f"{row[4]} {row[1]}" for row in rows)
            reasons = run(
                "sinfo", "--noheader", "--list-reasons", f"--partition={self.partition}", "--format=%E", check=False
            )
            why = "; ".join(sorted({line.strip() for line in reasons.splitlines() if line.strip()}))
            return (
                f"No node of partition {self.partition} can run a session ({states}{f': {why}' if why else ''}). Ask "
                "the cluster's administrators to resume them."
            )
        cpus = max(int(row[2].rstrip("+")) for row in rows)
        memory = max(int(row[3].rstrip("+")) for row in rows)
        if self.max_cpus > cpus:
            return f"Studios here may ask for {self.max_cpus} CPUs, but the largest node of partition {self.partition} has {cpus}; lower the most CPUs a studio may ask for."
        if self.max_memory_mb + SUPERVISOR_MEMORY_MB > memory:
            return (
                f"Studios here may ask for {self.max_memory_mb} MB (and the supervisor needs {SUPERVISOR_MEMORY_MB} MB more), "
                f"but the largest node of partition {self.partition} has {memory} MB; lower the most memory a studio may ask for."
            )
        try:
            run("sbatch", "--test-only", *self._placement(), "--cpus-per-task=1", "--wrap=true")
        except BackendError as error:
            return f"Slurm refuses jobs on partition {self.partition}: {error}"
        return ""

    def start_timeout_hint(self, handle: dict[str, Any]) -> str:
        state = self._job(handle["job_id"]) if handle.get("job_id") else None
        waiting = (
            f"Its Slurm job {handle['job_id']} is still {state['JobState']} ({state.get('Reason', '')}). "
            if state
            else ""
        )
        return f"{waiting}Check that partition {self.partition} has a node with room for it."

    def plan(self, spec: SessionSpec) -> dict[str, Any]:
        """The session's name, its ports on the node and its folder in the work directory; nothing exists yet."""
        port, control_port = random.sample(PORTS, 2)
        container = f"{spec.name}-{secrets.token_hex(4)}"
        return {
            "container": container,
            "port": port,
            "control_port": control_port,
            "spool": "" if self.on_s3 else str(Path(self.work_dir) / SPOOL / container),
            "cpus": spec.cpus,
            "memory_mb": spec.memory_mb,
            "image": self.images.get(spec.template, ""),
        }

    def aws_environment(self) -> dict[str, str]:
        """What a job needs to reach S3 besides its node: the platform's endpoints and region, and the compute
        environment's key pair when it has one."""
        environment = {name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}
        if self.credentials:
            environment["AWS_ACCESS_KEY_ID"] = self.credentials["aws_access_key_id"]
            environment["AWS_SECRET_ACCESS_KEY"] = self.credentials["aws_secret_access_key"]
        return environment

    def job_script(self, handle: dict[str, Any], job: dict[str, str]) -> str:
        """The job: the session's host (``supervisor/host.py``, as on a local host) in a mount namespace of its own,
        in a session folder on the node's own disk, its ``job`` (the host's environment) written there by the
        script for the host to read."""
        session_dir = f"/tmp/{handle['container']}"
        session_host = shlex.join(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "env",
                "-i",
                f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
                "LANG=C.UTF-8",
                f"PYTHONPATH={PROJECT_ROOT}",
                f"{CONFIG_FILE}={session_dir}/job.json",
                sys.executable,
                "-m",
                "studios.supervisor.host",
            ]
        )
        return (
            "#!/bin/sh\n"
            "umask 077\n"
            f"mkdir -m 700 {shlex.quote(session_dir)} && cd {shlex.quote(session_dir)} || exit 1\n"
            # One line of JSON in a quoted here-document: nothing in it is expanded.
            f"cat > job.json <<'STUDIOS_JOB'\n{json.dumps(job)}\nSTUDIOS_JOB\n"
            # The shell passes a SIGTERM (the platform's stop, Slurm's cancel) on to the session's host and waits
            # for it to end: a shell killed by it would leave the host running, no longer the job's, unsignalled.
            f"{session_host} &\n"
            "host=$!\n"
            "trap 'kill -TERM $host' TERM\n"
            "wait $host\n"
            "code=$?\n"
            "while kill -0 $host 2>/dev/null; do wait $host; code=$?; done\n"
            f"cd / && rm -rf --one-file-system {shlex.quote(session_dir)}\n"
            "exit $code\n"
        )

    def launch(self, spec: SessionSpec, handle: dict[str, Any]) -> dict[str, Any]:
        job = host_environment(
            spec,
            container_id=handle["container"],
            port=handle["port"],
            control_port=handle["control_port"],
            bind_host="0.0.0.0",  # the platform's proxy reaches the gate from another host
            image=handle["image"],
            image_cache=self.image_cache,
        )
        if self.on_s3 or any(mount.uri.startswith("s3://") for mount in spec.mounts):
            job.update(self.aws_environment())
        if handle["spool"]:
            spool = Path(handle["spool"])
            shutil.rmtree(spool, ignore_errors=True)
            spool.mkdir(mode=0o700, parents=True)
            output, folder = spool / "session.log", spool
        else:
            output, folder = Path(f"/tmp/{handle['container']}.log"), Path("/tmp")
        try:
            job_id = (
                run(
                    "sbatch",
                    "--parsable",
                    *self._placement(),
                    f"--job-name={handle['container']}",
                    f"--comment={self._comment(handle['container'])}",
                    f"--cpus-per-task={spec.cpus}",
                    f"--mem={spec.memory_mb + SUPERVISOR_MEMORY_MB}",
                    "--nodes=1",
                    "--export=NONE",
                    f"--output={output}",
                    f"--chdir={folder}",
                    *([f"--time={spec.time_limit_minutes}"] if spec.time_limit_minutes else []),
                    input=self.job_script(handle, job),
                )
                .strip()
                .split(";")[0]
            )
        except BackendError as error:
            if handle["spool"]:
                shutil.rmtree(handle["spool"], ignore_errors=True)
            raise BackendError(f"Slurm did not accept the job on partition {self.partition}: {error}") from None
        return {**handle, "job_id": job_id}

    def _comment(self, container: str) -> str:
        """What a session's job says of itself: the work directory it belongs to, and the session."""
        return f"studios {self.work_dir} {container}"

    def _submitted(self, handle: dict[str, Any]) -> str:
        """The id of the planned job that Slurm runs or will run, or "": submitted by the platform's user (another
        user may name a job as they like) with the plan's comment."""
        if "container" not in handle:
            return ""
        jobs = self._queued(f"--name={handle['container']}")
        return next((job_id for job_id, comment in jobs.items() if comment == self._comment(handle["container"])), "")

    def _queued(self, *selection: str) -> dict[str, str]:
        """The platform's user's jobs that have not ended (among ``selection``): their comments by id."""
        listing = run(
            "squeue",
            "--noheader",
            "--me",
            f"--states={','.join(sorted(WAITING | ENDING | {'RUNNING'}))}",
            "--format=%i|%k",
            *selection,
        )
        jobs = (line.partition("|") for line in listing.splitlines())
        return {job_id: comment for job_id, bar, comment in jobs if bar}

    def inventory(self) -> dict[str, str]:
        """The jobs of this work directory's sessions: their sessions by id."""
        mine = self._comment("")
        return {
            job_id: comment.removeprefix(mine)
            for job_id, comment in self._queued().items()
            if comment.startswith(mine) and comment != mine
        }

    def sweep(self, found: dict[str, str], owned_handles: Iterable[dict[str, Any]]) -> list[str]:
        """Cancel the jobs no live session's plan names (a start retried while its job was being submitted, a
        session whose studio is gone), and remove their log folders."""
        owned = {handle.get("container") for handle in owned_handles}
        removed = []
        for job_id, container in found.items():
            if container not in owned:
                run("scancel", job_id, check=False)
                if not self.on_s3:
                    shutil.rmtree(Path(self.work_dir) / SPOOL / container, ignore_errors=True)
                removed.append(f"Slurm job {job_id} ({container})")
        return removed

    def _job(self, job_id: str) -> dict[str, str] | None:
        """The job's ``scontrol show job`` record, or None once Slurm has forgotten it."""
        done = run("scontrol", "--oneliner", "show", "job", job_id, check=False)
        return fields_of(done) if "JobState=" in done else None

    def _node_address(self, node: str) -> str:
        return fields_of(run("scontrol", "--oneliner", "show", "node", node)).get("NodeAddr", node)

    def poll(self, handle: dict[str, Any]) -> SessionState:
        if "job_id" not in handle:
            return SessionState(alive=True, progress="Submitting the Slurm job")
        job = self._job(handle["job_id"])
        if job is None:
            return SessionState(
                alive=False,
                reason=f"Slurm no longer knows the session's job {handle['job_id']}. Start the studio again.",
            )
        state = job["JobState"]
        if state == "RUNNING":
            node = job.get("BatchHost") or job.get("NodeList", "")
            address = self._node_address(node)
            return SessionState(
                alive=True,
                progress=f"Slurm job {handle['job_id']} running on {node}: starting the session supervisor",
                endpoint=f"http://{address}:{handle['port']}",
                control=f"http://{address}:{handle['control_port']}",
            )
        if state in WAITING:
            reason = job.get("Reason", "None")
            text = PENDING_REASONS.get(reason, f"waiting ({reason})" if reason != "None" else "waiting to be scheduled")
            words = text.format(partition=self.partition, cpus=handle["cpus"], memory_mb=handle["memory_mb"])
            return SessionState(alive=True, progress=f"Slurm job {handle['job_id']} {state.lower()}: {words}")
        if state in ENDING:
            return SessionState(alive=True, progress=f"Slurm job {handle['job_id']} ending")
        template = ENDED_STATES.get(
            state, "The session's Slurm job {job_id} ended (" + state + "). Start the studio again."
        )
        exit_code = job.get("ExitCode", "0:0")
        return SessionState(
            alive=False,
            reason=template.format(
                job_id=handle["job_id"],
                exit_code=exit_code,
                node=job.get("NodeList", "its node"),
                memory_mb=handle["memory_mb"],
            ),
        )

    def extend(self, handle: dict[str, Any], time_limit_minutes: int) -> None:
        """Raise the job's time limit (Slurm lets only its operators raise one: the platform's user must be one)."""
        if handle.get("job_id"):
            run("scontrol", "update", f"JobId={handle['job_id']}", f"TimeLimit={time_limit_minutes}")

    def stop(self, handle: dict[str, Any]) -> None:
        """SIGTERM to a running job's supervisor (it saves a final checkpoint and ends the session); a job still
        waiting is cancelled: it has nothing to save."""
        job_id = self._job_id(handle)
        job = self._job(job_id) if job_id else None
        if job is None:
            return
        if job["JobState"] == "RUNNING":
            run("scancel", "--batch", "--signal=TERM", job_id, check=False)
        elif job["JobState"] in WAITING:
            run("scancel", job_id, check=False)

    def terminate(self, handle: dict[str, Any], timeout: float) -> None:
        """Ask the job to end, wait up to ``timeout``, then cancel it; remove its spool folder once it has ended."""
        job_id = self._job_id(handle)
        if job_id:
            self.stop({**handle, "job_id": job_id})
            if not self._ended(job_id, timeout):
                run("scancel", job_id, check=False)
                if not self._ended(job_id, 60):
                    raise BackendError(f"Slurm job {job_id} did not end after scancel")
        if handle.get("spool"):
            shutil.rmtree(handle["spool"], ignore_errors=True)

    def _ended(self, job_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            job = self._job(job_id)
            if job is None or job["JobState"] not in WAITING | ENDING | {"RUNNING"}:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(TERMINATE_POLL_SECONDS)
