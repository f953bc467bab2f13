"""The contract between the platform and a session supervisor: its configuration, its start-up steps and
the reports it may send. No Django: the supervisor ships in session images, and the platform checks every
report against this module before it believes a word of it.
"""

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Where the supervisor sends its reports, under the platform's URL: POST {platform_url}{REPORTS_PATH}<kind>.
REPORTS_PATH = "/api/sessions/"
PROGRESS, READY, FAILED, CHECKPOINT = "progress", "ready", "failed", "checkpoint"
CHECKPOINT_FAILED = "checkpoint-failed"
# The IDE did work since the supervisor's last look (``work``): the studio is not idle.
WORKING = "working"
# As the session stops: how many of its open pages saved their documents, and how many did not in time (``notices``).
PAGES_SAVED = "pages-saved"
REPORT_KINDS = (PROGRESS, READY, FAILED, CHECKPOINT, CHECKPOINT_FAILED, WORKING, PAGES_SAVED)
# Where the session's pages hear the platform's notices (a stop, a warning of one), on the session's own origin: a
# WebSocket the gate serves itself (``notices``), under the session's base path. The JupyterLab image's extension
# listens there.
NOTICES_PATH = "studios/notices"
# The longest a stop waits for the pages to save their open documents before it goes on without them.
SAVE_SECONDS = 8
# The longest notice the platform sends a session's pages.
NOTICE_MAX_LENGTH = 500

IDE_NAMES = {"jupyterlab": "JupyterLab", "rstudio": "RStudio Server", "vscode": "VS Code"}
PROVISIONING = "Provisioning compute"
PULLING = "Pulling image"
RESTORING = "Restoring checkpoint"
MOUNTING = "Mounting data"
STEP_NAMES = (PROVISIONING, PULLING, RESTORING, MOUNTING, *(f"Starting {name}" for name in IDE_NAMES.values()))
STEP_STATES = ("pending", "in-progress", "succeeded", "errored")
MESSAGE_MAX_LENGTH = 1000
MANIFEST_KEY = re.compile(r"manifests/[A-Za-z0-9_-]{1,64}/[0-9a-f]{32}\.json\.zst")
SHA256 = re.compile(r"[0-9a-f]{64}")
# Names a file of more environment variables (a JSON object), for hosts whose jobs others may inspect (Slurm's).
CONFIG_FILE = "STUDIOS_CONFIG_FILE"
# A job whose description others may read (AWS Batch's) carries, in place of the session token, a single-use start
# ticket: its supervisor redeems it for the token first thing, POST {platform_url}{TICKETS_PATH} with the ticket as
# its bearer credential, and the answer is {"token": ...}.
TICKET = "STUDIOS_TICKET"
TOKEN = "STUDIOS_TOKEN"  # the token (``SessionConfig.token``), as the environment names it
TICKETS_PATH = "/api/session-tickets"


def environ_with_file(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the variables of the file its ``CONFIG_FILE`` names: read once, then removed (they hold the
    session token)."""
    path = environ.get(CONFIG_FILE)
    if not path:
        return dict(environ)
    with open(path) as file:
        values: dict[str, str] = json.load(file)
    os.unlink(path)
    return {**environ, **values}


def ticket_sha256(ticket: str) -> str:
    """How the platform knows a start ticket (``TICKET``) without keeping it."""
    return hashlib.sha256(ticket.encode()).hexdigest()


def manifest_prefix(studio_id: int) -> str:
    """The folder of a studio's manifests in its checkpoint store: manifests/<prefix>/."""
    return f"studio-{studio_id}"


def starting_step(template: str) -> str:
    return f"Starting {IDE_NAMES.get(template, template)}"


@dataclass(frozen=True)
class Mount:
    name: str
    uri: str
    writable: bool


@dataclass(frozen=True)
class SessionConfig:
    """What a supervisor needs to run one session, on whatever host a backend places it."""

    template: str
    base_path: str  # the path prefix the session is served under
    platform_url: str  # where reports go
    work_dir: str  # the checkpoint store: a local folder or s3://bucket/prefix
    manifest_prefix: str  # this studio's manifests go under manifests/<prefix>/ of the store
    session_dir: str  # a folder only the supervisor uses: layer, root, logs
    port: int  # where the session is reached (the gate), on bind_host
    control_port: int  # where the platform asks for checkpoints
    # Authenticates the supervisor's reports and the platform's requests to the session; "" in a job that carries a
    # start ticket instead (``TICKET``), until its supervisor has redeemed it.
    token: str = ""
    bind_host: str = "127.0.0.1"
    isolation: str = "container"  # or "process": the IDE as a plain process, without a sandbox
    rootfs: str = "/"  # the container's lower layer: the template's root filesystem ("/": the image it runs in)
    container_id: str = ""
    cpus: int = 2
    memory_mb: int = 8192
    layer_mb: int = 5120
    mounts: tuple[Mount, ...] = ()
    # The checkpoint to restore: its name, manifest_key and manifest_sha256.
    restore: dict[str, str] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()  # host paths the sandbox must not see even though the root filesystem has them
    work_check_seconds: int = 0  # how often to look whether the IDE works (``work``); 0: never

    def to_environ(self) -> dict[str, str]:
        return {f"STUDIOS_{item.name.upper()}": _encode(getattr(self, item.name)) for item in fields(self)}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "SessionConfig":
        values: dict[str, Any] = {}
        for item in fields(cls):
            name = f"STUDIOS_{item.name.upper()}"
            if name in environ:
                values[item.name] = _decode(item.name, environ[name])
        return cls(**values)


def _encode(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return json.dumps([asdict(item) if isinstance(item, Mount) else item for item in value])
    return json.dumps(value)


def _decode(name: str, text: str) -> object:
    if name in ("mounts",):
        return tuple(Mount(**item) for item in json.loads(text))
    if name == "hidden":
        return tuple(json.loads(text))
    if name in ("port", "control_port", "cpus", "memory_mb", "layer_mb", "work_check_seconds"):
        return int(text)
    if name == "restore":
        return json.loads(text)
    return text


# What a session's job container runs after the image's entrypoint (tini): the supervisor.
SUPERVISOR_COMMAND = ["python", "-m", "studios.supervisor"]


@dataclass(frozen=True)
class Job:
    """What a session's job container runs: the image's entrypoint with ``command``, and ``environment`` (the
    session's configuration). The AWS Batch backend registers and submits it; on a local host, ``host.py`` runs it
    in a container made from the same image."""

    command: list[str]
    environment: dict[str, str]


class BadReport(ValueError):
    """A report says something a supervisor may not say; the message says what."""


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MESSAGE_MAX_LENGTH:
        raise BadReport(f"{what} must be text of at most {MESSAGE_MAX_LENGTH} characters")
    return value


def _steps(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not 1 <= len(value) <= len(STEP_NAMES):
        raise BadReport("steps must be a list of start-up steps")
    steps: list[dict[str, str]] = []
    for step in value:
        if not isinstance(step, dict) or set(step) != {"name", "state", "message"}:
            raise BadReport("a step has exactly a name, a state and a message")
        if step["name"] not in STEP_NAMES or step["state"] not in STEP_STATES:
            raise BadReport(f"unknown step {step['name']!r} or state {step['state']!r}")
        steps.append(
            {"name": step["name"], "state": step["state"], "message": _text(step["message"], "a step's message")}
        )
    return steps


def parse_report(kind: str, body: object, manifest_prefix: str) -> dict[str, Any]:
    """The report's content, as keyword arguments for the platform, or BadReport. Only what a supervisor is
    allowed to say passes: where the session is reached, for one, is never among it."""
    if kind not in REPORT_KINDS:
        raise BadReport(f"unknown report {kind!r}")
    if not isinstance(body, dict):
        raise BadReport("a report is a JSON object")
    allowed = {
        PROGRESS: {"steps"},
        READY: {"steps"},
        FAILED: {"reason", "checkpoint_invalid", "steps"},
        CHECKPOINT: {
            "manifest_key",
            "manifest_sha256",
            "size_bytes",
            "final",
            "layer_used_bytes",
            "layer_total_bytes",
            "seconds",
        },
        CHECKPOINT_FAILED: {"reason"},
        WORKING: set(),
        PAGES_SAVED: {"saved", "unsaved"},
    }[kind]
    if set(body) - allowed:
        raise BadReport(f"a {kind} report cannot say {', '.join(sorted(set(body) - allowed))}")
    if kind in (PROGRESS, READY):
        return {"steps": _steps(body.get("steps"))}
    if kind == WORKING:
        return {}
    if kind == PAGES_SAVED:
        counts = {name: body.get(name, 0) for name in ("saved", "unsaved")}
        if any(type(count) is not int or not 0 <= count <= 10_000 for count in counts.values()):
            raise BadReport("saved and unsaved are how many pages did, whole numbers")
        return counts
    if kind == CHECKPOINT_FAILED:
        return {"reason": _text(body.get("reason", ""), "reason") or "The checkpoint failed."}
    if kind == FAILED:
        return {
            "reason": _text(body.get("reason", ""), "reason") or "The session failed.",
            "checkpoint_invalid": body.get("checkpoint_invalid") is True,
            "steps": _steps(body["steps"]) if "steps" in body else None,
        }
    key, digest = body.get("manifest_key"), body.get("manifest_sha256")
    if (
        not isinstance(key, str)
        or not MANIFEST_KEY.fullmatch(key)
        or not key.startswith(f"manifests/{manifest_prefix}/")
    ):
        raise BadReport("a checkpoint's manifest must be one of this studio's")
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise BadReport("manifest_sha256 must be a SHA-256 in hex")
    sizes = {name: body.get(name, 0) for name in ("size_bytes", "layer_used_bytes", "layer_total_bytes")}
    if any(type(size) is not int or size < 0 for size in sizes.values()):
        raise BadReport("sizes are whole numbers of bytes")
    seconds = body.get("seconds")
    if seconds is not None and (type(seconds) not in (int, float) or not 0 <= seconds < 86400):
        raise BadReport("seconds is how long the checkpoint took, under a day")
    return {
        "manifest_key": key,
        "manifest_sha256": digest,
        "final": body.get("final") is True,
        "seconds": seconds,
        **sizes,
    }
