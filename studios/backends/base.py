"""The compute backend interface: every kind of compute environment implements these three calls.

Backends know nothing about Django requests, templates or models: they get a ``SessionSpec``
and return a JSON-serialisable handle that the platform stores and hands back later, from
any worker process.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..supervisor.protocol import SUPERVISOR_COMMAND, Job, Mount, SessionConfig


@dataclass(frozen=True)
class SessionSpec:
    name: str  # unique per studio, e.g. "studio-42"
    template: str
    base_path: str  # the path prefix the session is served under: "/" on its own origin
    cpus: int
    memory_mb: int
    token: str  # authenticates the supervisor's reports and the platform's requests to the session
    platform_url: str  # where the supervisor reports progress and readiness
    work_dir: str  # where checkpoints are stored: a local folder or s3://bucket/prefix
    manifest_prefix: str  # the studio's own folder for manifests in the store
    mounts: list[Mount] = field(default_factory=list)
    # The checkpoint to restore: name, manifest_key, manifest_sha256.
    restore: dict[str, str] = field(default_factory=dict)
    storage_quota_mb: int = 5120
    work_check_seconds: int = 0  # how often the supervisor looks whether the IDE works, for the idle stop; 0: never
    labels: dict[str, str] = field(default_factory=dict)  # who the session belongs to: workspace, studio, user
    time_limit_minutes: int = 0  # how long its compute may run (its lifespan and a final checkpoint); 0: no limit

    def config(self, **placement: Any) -> SessionConfig:
        """The supervisor's configuration for this session; ``placement``: where and how its backend runs it."""
        return SessionConfig(
            template=self.template,
            base_path=self.base_path,
            token=self.token,
            platform_url=self.platform_url,
            work_dir=self.work_dir,
            manifest_prefix=self.manifest_prefix,
            cpus=self.cpus,
            memory_mb=self.memory_mb,
            layer_mb=self.storage_quota_mb,
            work_check_seconds=self.work_check_seconds,
            mounts=tuple(self.mounts),
            restore=self.restore,
            **placement,
        )

    def job(self, *, container_id: str, port: int, control_port: int, bind_host: str) -> Job:
        """The job container that runs this session from its template's image, on whatever host a backend places it
        (an AWS Batch instance, or this machine's ``supervisor/host.py``): the supervisor, configured to sandbox the
        IDE on the image's own root filesystem, with its session folder in the job container's own ``/tmp``
        (hidden from the sandbox), serving the gate and the control endpoint on ``bind_host``."""
        session_dir = f"/tmp/{container_id}"
        config = self.config(
            session_dir=session_dir,
            port=port,
            control_port=control_port,
            bind_host=bind_host,
            isolation="container",
            rootfs="/",
            container_id=container_id,
            hidden=(session_dir,),
        )
        return Job(command=SUPERVISOR_COMMAND, environment=config.to_environ())


@dataclass(frozen=True)
class SessionState:
    alive: bool
    reason: str = ""  # why it is not alive, in words a user can act on
    progress: str = ""  # while the compute is being provisioned: where it stands, for the start-up steps
    endpoint: str = ""  # where the session is reached, once the backend knows (a Batch job's host)...
    control: str = ""  # ...and where the platform asks it for checkpoints


class BackendError(Exception):
    """The backend could not do what was asked; the message is shown to the user."""


class ComputeBackend(ABC):
    # Why sessions here do not run isolated from the host, or "" when they do (the studio's page says so).
    isolation_problem = ""

    @abstractmethod
    def template_problem(self, template: str) -> str:
        """Why ``template`` cannot run here and how to fix it, or "" when it can."""

    @abstractmethod
    def environment_problem(self) -> str:
        """Why no session can start on this compute environment now, or "" when they can.

        Checked when an admin saves the compute environment and periodically; a problem makes it invalid.
        """

    @abstractmethod
    def start_timeout_hint(self, handle: dict[str, Any]) -> str:
        """What to check when a session has not become ready in time: a sentence for the studio's reason."""

    def plan(self, spec: SessionSpec) -> dict[str, Any]:
        """The handle of a session about to start: everything ``launch`` will create, named, and where the
        session will be reached (``endpoint``, ``control``) where the backend decides it. Creates nothing."""
        return {}

    @abstractmethod
    def launch(self, spec: SessionSpec, handle: dict[str, Any]) -> dict[str, Any]:
        """Start the session planned in ``handle`` and return its handle; the supervisor reports readiness."""

    def recover(self, handle: dict[str, Any]) -> dict[str, Any] | None:
        """The handle ``launch`` returned for the planned ``handle`` to a worker that died before recording it (killed
        between submitting a job and recording the job's id): its compute, found by the name ``plan`` gave it,
        when that has not ended. None when ``handle`` is complete, or nothing of it runs or waits to run. Only
        compute named by a scheduler needs it: what a local launch creates the plan names in full."""
        return None

    @abstractmethod
    def poll(self, handle: dict[str, Any]) -> SessionState:
        """Whether the session's compute still exists."""

    @abstractmethod
    def stop(self, handle: dict[str, Any]) -> None:
        """Ask the session to end, saving a final checkpoint first; do not wait."""

    def extend(self, handle: dict[str, Any], time_limit_minutes: int) -> None:
        """The session's lifespan was extended: its compute may now run ``time_limit_minutes`` from its start. Only
        compute with a time limit of its own (a Slurm job's) has anything to change."""
        return None

    @abstractmethod
    def terminate(self, handle: dict[str, Any], timeout: float) -> None:
        """Ask the session to end, wait up to ``timeout`` seconds, then end it by force. Idempotent."""

    def inventory(self) -> Any:
        """What of this platform's sessions the backend's compute holds, for ``sweep``: listed before the sessions
        are read, it holds nothing of a session created since (a session's handle is recorded before anything of it
        is created). None where nothing can outlive its session unnoticed."""
        return None

    def sweep(self, found: Any, owned_handles: Iterable[dict[str, Any]]) -> list[str]:
        """End and remove what ``found`` (``inventory``) lists that none of ``owned_handles`` names; what it did."""
        return []


class SchedulerBackend(ComputeBackend):
    """A backend whose sessions are a scheduler's jobs, named by ``plan`` before they are submitted: a worker killed
    between submitting a job and recording its id leaves a job the platform finds again by that name."""

    @abstractmethod
    def _submitted(self, handle: dict[str, Any]) -> str:
        """The id of the job the plan in ``handle`` names, submitted by the platform and not ended, or ""."""

    def recover(self, handle: dict[str, Any]) -> dict[str, Any] | None:
        """The job an earlier launch of this plan submitted and did not record, by its name (unique to the start)."""
        job_id = "" if "job_id" in handle else self._submitted(handle)
        return {**handle, "job_id": job_id} if job_id else None

    def _job_id(self, handle: dict[str, Any]) -> str:
        """The session's job: recorded, or submitted by a launch that died before recording it."""
        return str(handle.get("job_id") or self._submitted(handle))
