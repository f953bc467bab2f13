"""Tenancy, compute environments, datasets and studios: the state the lifecycle changes."""

import math
from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from . import credentials
from .supervisor import protocol


class Role(models.TextChoices):
    """Workspace roles, highest first; each includes the ones after it."""

    OWNER = "owner"
    ADMIN = "admin"
    MAINTAIN = "maintain"
    LAUNCH = "launch"
    CONNECT = "connect"
    VIEW = "view"

    @classmethod
    def rank(cls, role):
        """Higher is more powerful: view is 0, owner is 5."""
        return list(reversed(cls.values)).index(role)


class Organization(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)

    def __str__(self):
        return self.name


# How long a session runs before it is stopped, unless a maintainer extends it: chosen per studio within these
# bounds (and its extensions keep within the maximum, counted from the session's start).
MIN_LIFESPAN_HOURS = 1
MAX_LIFESPAN_HOURS = 120
DEFAULT_LIFESPAN_HOURS = 8
LIFESPAN_VALIDATORS = [MinValueValidator(MIN_LIFESPAN_HOURS), MaxValueValidator(MAX_LIFESPAN_HOURS)]
# A running studio that nobody used and whose IDE did no work for this long may be stopped (off unless chosen).
MIN_IDLE_MINUTES = 30
MAX_IDLE_MINUTES = 24 * 60
IDLE_VALIDATORS = [MinValueValidator(MIN_IDLE_MINUTES), MaxValueValidator(MAX_IDLE_MINUTES)]


class Workspace(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="workspaces")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100)
    max_running_studios = models.PositiveIntegerField(
        null=True, blank=True, help_text="How many studios may be starting or running at once; empty for no cap."
    )
    default_lifespan_hours = models.PositiveSmallIntegerField(
        default=DEFAULT_LIFESPAN_HOURS,
        validators=LIFESPAN_VALIDATORS,
        help_text=f"A new studio's lifespan, unless whoever adds it chooses another ({MIN_LIFESPAN_HOURS} to "
        f"{MAX_LIFESPAN_HOURS} hours): each session is stopped that long after it started, unless extended.",
    )
    idle_stop_minutes = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=IDLE_VALIDATORS,
        help_text=f"A new studio's idle stop, unless whoever adds it chooses otherwise: stopped after this many "
        f"minutes ({MIN_IDLE_MINUTES} to {MAX_IDLE_MINUTES}) in which nobody used it and its IDE did no work. "
        "Empty: off.",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="unique_workspace_slug")]

    def __str__(self):
        return f"{self.organization.slug}/{self.slug}"

    def get_absolute_url(self):
        return reverse("studio_list", args=[self.organization.slug, self.slug])


class Membership(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="one_membership_per_workspace")]

    def __str__(self):
        return f"{self.user} is {self.role} of {self.workspace}"


class ComputeEnvironment(models.Model):
    class Kind(models.TextChoices):
        LOCAL = "local", "Local"
        AWS_BATCH = "aws-batch", "AWS Batch"
        SLURM = "slurm", "Slurm"

    class Status(models.TextChoices):
        AVAILABLE = "available"
        INVALID = "invalid"
        CHECKING = "checking"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="compute_environments")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.LOCAL)
    region = models.CharField(max_length=50, default="local")
    work_dir = models.CharField(
        max_length=500, help_text="Where checkpoints are kept: a local folder or s3://bucket/prefix."
    )
    writable_data_paths = models.JSONField(
        default=list, blank=True, help_text="Data under these paths may be mounted read-write."
    )
    job_queue = models.CharField(
        max_length=300, blank=True, help_text="AWS Batch: the job queue sessions are submitted to (name or ARN)."
    )
    partition = models.CharField(max_length=100, blank=True, help_text="Slurm: the partition sessions run in.")
    account = models.CharField(max_length=100, blank=True, help_text="Slurm: the account jobs are charged to, if any.")
    qos = models.CharField(max_length=100, blank=True, help_text="Slurm: the quality of service jobs ask for, if any.")
    images = models.JSONField(
        default=dict,
        blank=True,
        help_text='The image each template runs, by registry reference, e.g. {"jupyterlab": '
        '"registry.example.com/studios/jupyterlab:4.6.6"}; a template not named runs the platform\'s default '
        "(STUDIOS_TEMPLATE_IMAGES).",
    )
    # An access key pair, encrypted (see credentials.py); empty to use the platform's own AWS role.
    sealed_credentials = models.TextField(blank=True, editable=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.AVAILABLE)
    status_reason = models.TextField(blank=True)
    status_checked = models.DateTimeField(null=True, blank=True, help_text="When the status was last checked.")
    # What the pages need from the backend, found by the environment check (``tasks.check_compute_environment``) so
    # that no request builds a backend: {template: why it cannot run here ("" when it can)}, and why sessions here
    # are not isolated ("" when they are).
    template_problems = models.JSONField(default=dict, blank=True, editable=False)
    isolation_problem = models.TextField(blank=True, editable=False)
    min_cpus = models.PositiveIntegerField(default=1)
    max_cpus = models.PositiveIntegerField(default=16)
    min_memory_mb = models.PositiveIntegerField(default=512)
    max_memory_mb = models.PositiveIntegerField(default=65536)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="unique_compute_environment_name")]

    def __str__(self):
        return self.name

    def template_availability(self):
        """(template label, version, problem) for each template, as the last check found them; empty before the
        first."""
        if not self.status_checked:
            return []
        return [
            (label, self.template_version(value), self.template_problems.get(value, ""))
            for value, label in Template.choices
        ]

    def template_images(self):
        """{template: image reference} sessions here run: the environment's own, else the platform's defaults."""
        return {**settings.STUDIOS_TEMPLATE_IMAGES, **self.images}

    def template_version(self, template):
        """The tag of the template's image, shown as the template's version ("" when it has none)."""
        reference = self.template_images().get(template, "").split("@")[0]
        name, _, tag = reference.rpartition(":")
        return tag if name and "/" not in tag else ""

    def template_refusal(self, template):
        """Why ``template`` cannot run here, as the add form says it; "" when it can (or before the first check)."""
        problem = self.template_problems.get(template, "")
        return f"{Template(template).label} cannot run on {self.name}. {problem}" if problem else ""

    def is_writable(self, uri):
        return any(data_path_contains(path, uri) for path in self.writable_data_paths)

    @property
    def has_credentials(self):
        return bool(self.sealed_credentials)

    def set_credentials(self, access_key_id, secret_access_key):
        self.sealed_credentials = credentials.seal(
            {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}
        )

    def forget_credentials(self):
        self.sealed_credentials = ""

    def aws_credentials(self):
        """boto3 keyword arguments for the stored access key pair; empty for the platform's own role."""
        return credentials.unseal(self.sealed_credentials) if self.sealed_credentials else {}


def normalize_data_path(uri):
    """One spelling per data path, so that equal paths compare equal: a trailing slash."""
    return uri.rstrip("/") + "/"


def data_path_contains(outer, inner):
    return normalize_data_path(inner).startswith(normalize_data_path(outer))


def data_paths_overlap(a, b):
    return data_path_contains(a, b) or data_path_contains(b, a)


class Dataset(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="datasets")
    name = models.SlugField(max_length=100, help_text="Mounted at /workspace/data/<name>.")
    uri = models.CharField(max_length=500, help_text="s3://bucket/prefix/ or a local folder.")
    region = models.CharField(max_length=50, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="unique_dataset_name")]

    def __str__(self):
        return self.name


class Template(models.TextChoices):
    JUPYTERLAB = "jupyterlab", "JupyterLab"
    RSTUDIO = "rstudio", "RStudio Server"
    VSCODE = "vscode", "VS Code"


class StudioStatus(models.TextChoices):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERRORED = "errored"


# Which status may follow which. Everything else is a bug in the caller, not a user error.
ALLOWED_TRANSITIONS = {
    StudioStatus.STOPPED: {StudioStatus.STARTING},
    StudioStatus.ERRORED: {StudioStatus.STARTING},
    StudioStatus.STARTING: {StudioStatus.RUNNING, StudioStatus.STOPPING, StudioStatus.ERRORED},
    StudioStatus.RUNNING: {StudioStatus.STOPPING, StudioStatus.ERRORED},
    StudioStatus.STOPPING: {StudioStatus.STOPPED, StudioStatus.ERRORED},
}


class InvalidTransition(Exception):
    pass


TRANSITIONAL_STATUSES = {StudioStatus.STARTING, StudioStatus.STOPPING}
ACTIVE_STATUSES = {StudioStatus.STARTING, StudioStatus.RUNNING, StudioStatus.STOPPING}


class Studio(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="studios")
    name = models.CharField(max_length=80)
    description = models.TextField(blank=True)
    template = models.CharField(max_length=20, choices=Template.choices, default=Template.JUPYTERLAB)
    template_version = models.CharField(max_length=20, blank=True)
    compute_environment = models.ForeignKey(ComputeEnvironment, on_delete=models.PROTECT, related_name="studios")
    datasets = models.ManyToManyField(Dataset, blank=True, related_name="studios")
    cpus = models.PositiveIntegerField(default=2, validators=[MinValueValidator(1), MaxValueValidator(256)])
    memory_mb = models.PositiveIntegerField(default=8192, validators=[MinValueValidator(128)])
    lifespan_hours = models.PositiveSmallIntegerField(
        default=DEFAULT_LIFESPAN_HOURS,
        validators=LIFESPAN_VALIDATORS,
        help_text="Each session is stopped this long after it started, unless a maintainer extends it.",
    )
    idle_stop_minutes = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=IDLE_VALIDATORS,
        help_text="Stopped after this many minutes in which nobody used it and its IDE did no work. Empty: off.",
    )
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="studios")
    created = models.DateTimeField(auto_now_add=True)
    parent_checkpoint = models.ForeignKey(
        "checkpoints.Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="clones"
    )

    status = models.CharField(max_length=10, choices=StudioStatus.choices, default=StudioStatus.STOPPED)
    status_reason = models.TextField(blank=True)
    status_changed = models.DateTimeField(auto_now_add=True)
    # The latest start: the running session while the studio is active, the last one's record after.
    session = models.ForeignKey("Session", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # When a member last used the session through the proxy, and who (``activity``).
    last_activity = models.DateTimeField(null=True, blank=True)
    last_active_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="unique_studio_name")]
        # The list's default ordering (``listing``), so that a page of a large workspace reads only its rows.
        indexes = [models.Index(F("workspace_id"), F("created").desc(), F("id").desc(), name="studio_list_newest")]
        ordering = ["-created"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("studio_detail", args=[self.pk])

    def transition(self, status, reason=""):
        """Change the status in memory; the caller saves inside its transaction."""
        if status not in ALLOWED_TRANSITIONS[StudioStatus(self.status)]:
            raise InvalidTransition(f"{self.status} cannot become {status}")
        self.status = status
        self.status_reason = reason
        self.status_changed = timezone.now()

    @property
    def connected_members(self):
        """[(member, since)] of everyone with an open session connection, once each, first to connect first.

        Reads ``connections`` and their users: prefetch ``connections__user`` when listing studios.
        """
        since: dict = {}  # member -> when they first connected
        for connection in sorted(self.connections.all(), key=lambda connection: connection.opened):
            since.setdefault(connection.user, connection.opened)
        return list(since.items())

    @property
    def is_transitional(self):
        return self.status in TRANSITIONAL_STATUSES

    @property
    def can_start(self):
        return self.status in (StudioStatus.STOPPED, StudioStatus.ERRORED)

    @property
    def can_stop(self):
        return self.status in (StudioStatus.STARTING, StudioStatus.RUNNING)

    @property
    def can_force_stop(self):
        """A stop that has not finished after a while may be forced; before that, it is given time."""
        overdue = timedelta(seconds=settings.STUDIOS_FORCE_STOP_AFTER_SECONDS)
        return self.status == StudioStatus.STOPPING and timezone.now() - self.status_changed >= overdue

    @property
    def can_delete(self):
        return self.status in (StudioStatus.STOPPED, StudioStatus.ERRORED)

    @property
    def can_connect(self):
        return self.status == StudioStatus.RUNNING and self.session is not None and bool(self.session.endpoint)

    @property
    def session_open(self):
        """Whether members already in the session may go on reaching it: while it runs, and while it stops, so that
        its pages can save their documents before the final checkpoint (``supervisor.notices``). New members join
        only a running one (``can_connect``)."""
        open_statuses = (StudioStatus.RUNNING, StudioStatus.STOPPING)
        return self.status in open_statuses and self.session is not None and bool(self.session.endpoint)

    @property
    def active_session(self):
        """The session of a starting, running or stopping studio; None otherwise."""
        return self.session if self.status in ACTIVE_STATUSES else None

    @property
    def stops_at(self):
        """When the lifespan of a starting or running studio runs out; None for any other."""
        session = self.active_session
        return session.stops_at if session is not None and self.can_stop else None

    @property
    def time_left(self):
        """How long until ``stops_at`` (never below zero); None when the studio is not running."""
        stops_at = self.stops_at
        return max(stops_at - timezone.now(), timedelta(0)) if stops_at is not None else None

    @property
    def idle_since(self):
        """Since when a running studio with an idle stop was neither used by a member nor worked in by its IDE."""
        session = self.active_session
        if not self.idle_stop_minutes or session is None or self.status != StudioStatus.RUNNING:
            return None
        return max(moment for moment in (self.status_changed, self.last_activity, session.last_work) if moment)

    @property
    def next_stop(self):
        """The next automatic stop, (when, why as the platform will say it, its ``StopReason``); None when none is
        ahead. Reads the session: select it with the studio when listing."""
        stops = []
        session, idle_since, idle_minutes = self.active_session, self.idle_since, self.idle_stop_minutes
        if session is not None and self.stops_at is not None:
            stops.append((self.stops_at, f"Lifespan of {session.lifespan_hours} h reached.", StopReason.LIFESPAN))
        if idle_since is not None and idle_minutes:
            why = f"Idle for {idle_minutes} minutes: nobody used it and its IDE did no work."
            stops.append((idle_since + timedelta(minutes=idle_minutes), why, StopReason.IDLE))
        return min(stops) if stops else None

    @property
    def stop_warning(self):
        """The next automatic stop (``next_stop``) when it is within the warning period
        (STUDIOS_STOP_WARNING_MINUTES), else None."""
        stop = self.next_stop
        if stop is None or stop[0] - timezone.now() > timedelta(minutes=settings.STUDIOS_STOP_WARNING_MINUTES):
            return None
        return stop

    @property
    def startup_steps(self):
        """The session's start-up steps; the restoring one says which checkpoint by its name now (a rename after the
        start shows). Reads ``session.restored_from``."""
        if self.session is None:
            return []
        source = self.session.restored_from
        return [
            {**step, "checkpoint": source.name} if step["name"] == protocol.RESTORING and source else step
            for step in self.session.steps
        ]


class Session(models.Model):
    """One start of a studio, from Start until its compute is gone: who started it with what, how the
    platform reaches it, how it went and how it ended.

    The token authenticates the supervisor's reports and the platform's requests to the session; it is
    cleared when the session ends, so that nothing can act as the session afterwards.
    """

    studio = models.ForeignKey(Studio, on_delete=models.CASCADE, related_name="sessions")
    token = models.CharField(max_length=64, unique=True, null=True, blank=True)
    # The SHA-256 of the start ticket its supervisor redeemed for the token (``lifecycle.redeem_ticket``), once it has.
    redeemed_ticket = models.CharField(max_length=64, blank=True, editable=False)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    started = models.DateTimeField(default=timezone.now)
    ended = models.DateTimeField(null=True, blank=True)
    end_status = models.CharField(max_length=10, choices=StudioStatus.choices, blank=True)
    end_reason = models.TextField(blank=True)
    cpus = models.PositiveIntegerField()
    memory_mb = models.PositiveIntegerField()
    # What the backend created for it, named before it was created; and where the platform reaches it.
    handle = models.JSONField(default=dict, blank=True)
    endpoint = models.CharField(max_length=200, blank=True)
    control_endpoint = models.CharField(
        max_length=200, blank=True, help_text="Where the platform asks for checkpoints."
    )
    ready = models.BooleanField(default=False, help_text="The supervisor reported its IDE answering.")
    launched = models.BooleanField(default=False, help_text="The backend has created what the handle names.")
    worked_on = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a task last worked on starting or stopping it; a stale time means none does.",
    )
    steps = models.JSONField(default=list, blank=True)
    stops_at = models.DateTimeField(
        null=True, blank=True, help_text="When its lifespan runs out: it is stopped then, unless extended."
    )
    # The automatic stop its members were last warned of (``Studio.next_stop``): an extension or a member's use
    # moves the next stop, which is then warned of in turn. A stop is made only once it was warned of.
    warned_for = models.DateTimeField(null=True, blank=True, editable=False)
    stop_reason = models.TextField(
        blank=True, help_text="Why the platform stopped it (lifespan, idle); empty when a member did."
    )
    last_work = models.DateTimeField(
        null=True, blank=True, help_text="When its supervisor last saw its IDE working (for the idle stop)."
    )
    unsaved_pages = models.PositiveIntegerField(
        default=0, help_text="As it stopped: how many of the pages open in it did not save their documents in time."
    )
    # The checkpoint this session saves into, and the one it was restored from.
    checkpoint = models.ForeignKey(
        "checkpoints.Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    restored_from = models.ForeignKey(
        "checkpoints.Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    layer_used_bytes = models.BigIntegerField(null=True, blank=True)
    layer_total_bytes = models.BigIntegerField(null=True, blank=True)
    # The last checkpoint that failed, while no later one succeeded: why, and when.
    checkpoint_error = models.TextField(blank=True)
    checkpoint_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started", "-pk"]

    def __str__(self):
        return f"{self.studio} session of {self.started:%Y-%m-%d %H:%M}"

    @property
    def duration(self):
        return (self.ended or timezone.now()) - self.started

    @property
    def lifespan_hours(self):
        """Its lifespan with its extensions, in whole hours (None without one)."""
        return round((self.stops_at - self.started) / timedelta(hours=1)) if self.stops_at else None

    @property
    def time_limit_minutes(self):
        """How long its compute may run from its start, for compute with a time limit of its own (a Slurm job's): its
        lifespan, then the stop's time for a final checkpoint and a minute for beat to notice; 0 without a lifespan."""
        if not self.stops_at:
            return 0
        grace = timedelta(seconds=settings.STUDIOS_STOP_TIMEOUT_SECONDS, minutes=1)
        return math.ceil((self.stops_at - self.started + grace) / timedelta(minutes=1))


class ActiveMount(models.Model):
    """A data path held by a starting or running studio.

    The unique constraint is what makes the exclusive-mount rule hold when two starts race.
    """

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE)
    data_path = models.CharField(max_length=500)
    studio = models.ForeignKey(Studio, on_delete=models.CASCADE, related_name="active_mounts")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE)
    writable = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "data_path"], name="one_active_mount_per_data_path")
        ]

    def __str__(self):
        return f"{self.data_path} held by {self.studio}"


class WebProcess(models.Model):
    """A web process serving the proxy. Its heartbeat vouches for the session connections it holds.

    ``beating_since`` starts its current run of beats without a break: how long the database has been reachable,
    as this process saw it (``presence.forget_dead_processes`` judges no one dead before that is long enough).
    """

    id = models.CharField(max_length=100, primary_key=True)
    heartbeat = models.DateTimeField()
    beating_since = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.id


class SessionConnection(models.Model):
    """A member connected to a running session through the proxy process ``web_process``, since ``opened``: one
    row however many WebSockets the member's pages hold open there (``presence``).

    Written when the member's first WebSocket opens and after their last one closes, and again by the heartbeat of
    ``web_process`` when a write failed. When that process dies without closing its connections, its heartbeat goes
    stale and the rows are forgotten.
    """

    studio = models.ForeignKey(Studio, on_delete=models.CASCADE, related_name="connections")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="session_connections")
    opened = models.DateTimeField(default=timezone.now)
    web_process = models.CharField(max_length=100, db_index=True)

    def __str__(self):
        return f"{self.user} on {self.studio} since {self.opened:%H:%M}"


class AccessToken(models.Model):
    """A personal access token: a user's scripts and the ``studios`` command act as that user through the API.

    Only the SHA-256 of the secret is kept (the secret is shown once, when it is made); ``prefix``, its first
    characters, tells tokens apart on the page. A revoked or expired token, or one whose user is inactive, is
    refused at the next request (``tokens.authenticate``).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    name = models.CharField(max_length=100)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(null=True, blank=True, help_text="Empty: never.")
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-pk"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…) of {self.user}"

    @property
    def is_expired(self):
        return self.expires is not None and self.expires <= timezone.now()

    @property
    def is_active(self):
        return self.revoked is None and not self.is_expired


class SessionAccess(models.Model):
    """A browser's access to one studio's session origin (``origins``).

    The platform records it when it has checked the member's login and role, and hands the browser a ticket naming
    it; the session origin redeems the ticket once, within a minute, for a cookie naming it. It ends with the
    platform login that asked for it (``login``, a hash of that session's key): logging out deletes it.
    """

    key = models.CharField(max_length=64, primary_key=True)
    studio = models.ForeignKey(Studio, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    login = models.CharField(max_length=64, db_index=True)
    issued = models.DateTimeField(default=timezone.now, db_index=True)
    redeemed = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "session accesses"

    def __str__(self):
        return f"{self.user} on {self.studio}'s session origin"


class StopReason(models.TextChoices):
    """Why a session ended, as the activity log records it."""

    USER = "user", "by a member"
    LIFESPAN = "lifespan", "its lifespan was over"
    IDLE = "idle", "it was idle"
    ERROR = "error", "an error"
    FORCE = "force", "forced"


class Event(models.Model):
    """One entry of a workspace's activity log: what happened to a studio, who did it, and how long it took.

    Written by the lifecycle service and the proxy's presence (``activity.record``), never by views; shown on the
    studio's Activity tab and the workspace's Activity page. It outlives its studio (``studio_name`` says which
    one it was) and its session: it holds what it says, so it never needs them to be read.
    """

    class Kind(models.TextChoices):
        ADDED = "added", "Added"
        STARTED = "started", "Start"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stop"
        ERRORED = "errored", "Errored"
        DELETED = "deleted", "Deleted"
        RENAMED = "renamed", "Renamed"
        STARTED_AS_NEW = "started-as-new", "Started as new"
        CONNECTED = "connected", "Connection"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="events")
    studio = models.ForeignKey(Studio, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    studio_name = models.CharField(max_length=80, help_text="The studio's name when it happened.")
    session = models.ForeignKey(Session, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Who did it; empty when the platform did.",
    )
    at = models.DateTimeField(default=timezone.now)
    ended = models.DateTimeField(
        null=True, blank=True, help_text="A stop: when the session was gone; a connection: when the member left."
    )
    reason = models.CharField(max_length=10, choices=StopReason.choices, blank=True)
    message = models.TextField(blank=True)
    seconds = models.FloatField(
        null=True,
        blank=True,
        help_text="How long it took: running, from the start; a stop, until its session was gone. (A column of its "
        "own: the metrics count these by the ten thousand at every scrape.)",
    )
    # What else it says: a start's cpus, memory_mb and checkpoint; a rename's old and new name; a start as new's
    # source studio and checkpoint; a stop's or an error's session_seconds (how long the session ran).
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [
            models.Index(fields=["workspace", "-at"], name="event_workspace_at"),
            models.Index(fields=["studio", "-at"], name="event_studio_at"),
            models.Index(fields=["kind", "-at"], name="event_kind_at"),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} of {self.studio_name} at {self.at:%Y-%m-%d %H:%M}"

    @property
    def duration(self):
        """A stop's or a connection's length; None while it lasts, and for other kinds."""
        return self.ended - self.at if self.ended else None
