"""The compute backend interface: every kind of compute environment implements these three calls.

Backends know nothing about Django requests, templates or models: they get a ``SessionSpec``
and return a JSON-serialisable handle that the platform stores and hands back later, from
any worker process.
"""

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Mount:
    name: str
    uri: str
    writable: bool


@dataclass(frozen=True)
class SessionSpec:
    name: str  # unique per studio, e.g. "studio-42"
    template: str
    base_path: str  # the proxy's path prefix, e.g. "/studios/42/connect/"
    cpus: int
    memory_mb: int
    token: str  # authenticates the session's callbacks and the proxy's requests to the session
    callback_url: str  # where the session agent reports progress and readiness
    work_dir: str  # where checkpoints are stored: a local folder or s3://bucket/prefix
    mounts: list[Mount] = field(default_factory=list)
    restore: dict = field(default_factory=dict)  # the checkpoint to restore: name, manifest_key, manifest_sha256
    storage_quota_mb: int = 5120
    labels: dict = field(default_factory=dict)  # who the session belongs to: workspace, studio, user

    def environment(self):
        """What the session agent reads from its environment, on every backend."""
        return {
            "STUDIOS_TEMPLATE": self.template,
            "STUDIOS_BASE_PATH": self.base_path,
            "STUDIOS_SESSION_TOKEN": self.token,
            "STUDIOS_CALLBACK_URL": self.callback_url,
            "STUDIOS_WORK_DIR": self.work_dir,
            "STUDIOS_MOUNTS": json.dumps([asdict(mount) for mount in self.mounts]),
            "STUDIOS_RESTORE": json.dumps(self.restore),
        }


@dataclass(frozen=True)
class SessionState:
    alive: bool
    reason: str = ""  # why it is not alive, in words a user can act on
    progress: str = ""  # while the compute is being provisioned: where it stands, for the start-up steps


class BackendError(Exception):
    """The backend could not do what was asked; the message is shown to the user."""


class SessionFailed(BackendError):
    """The session failed before it started, for a reason of its own (shown as it is); ``checkpoint_invalid``
    when the checkpoint it restored failed verification."""

    def __init__(self, reason, checkpoint_invalid=False):
        super().__init__(reason)
        self.checkpoint_invalid = checkpoint_invalid


class ComputeBackend(ABC):
    @abstractmethod
    def template_problem(self, template: str) -> str:
        """Why ``template`` cannot run here and how to fix it, or "" when it can."""

    @abstractmethod
    def environment_problem(self) -> str:
        """Why no session can start on this compute environment now, or "" when they can.

        Checked when an admin saves the compute environment and periodically; a problem makes it invalid.
        """

    @abstractmethod
    def start_timeout_hint(self, handle: dict) -> str:
        """What to check when a session has not become ready in time: a sentence for the studio's reason."""

    @abstractmethod
    def launch(self, spec: SessionSpec) -> dict:
        """Start a session and return its handle; the session agent reports readiness itself."""

    @abstractmethod
    def poll(self, handle: dict) -> SessionState:
        """Whether the session's compute still exists."""

    def storage_usage(self, handle: dict):
        """(bytes used, bytes in all) of the session's writable layer, where the backend can tell."""
        return None

    @abstractmethod
    def terminate(self, handle: dict, timeout: float) -> None:
        """Ask the session to end, wait up to ``timeout`` seconds, then end it by force. Idempotent."""
