import re
from typing import cast

from django import forms
from django.core.exceptions import ValidationError

from .lifecycle import held_data_paths, holder_of
from .models import (
    MAX_IDLE_MINUTES,
    MAX_LIFESPAN_HOURS,
    MIN_IDLE_MINUTES,
    MIN_LIFESPAN_HOURS,
    ComputeEnvironment,
    Dataset,
    Studio,
    Template,
)

LIFESPAN_RANGE = f"A lifespan is {MIN_LIFESPAN_HOURS} to {MAX_LIFESPAN_HOURS} hours."
IDLE_RANGE = f"An idle stop is {MIN_IDLE_MINUTES} to {MAX_IDLE_MINUTES} minutes, or empty for none."


def model_choices(form, name) -> forms.ModelChoiceField:
    """``form``'s model choice field ``name`` (``form.fields`` is typed as holding plain fields)."""
    return cast(forms.ModelChoiceField, form.fields[name])


class ResourcesForm(forms.Form):
    """CPUs, memory and mounts, checked against the compute environment and the data paths held now."""

    cpus = forms.IntegerField(label="CPUs", initial=2, min_value=1)
    memory_mb = forms.IntegerField(label="Memory (MB)", initial=8192, min_value=1)
    datasets = forms.ModelMultipleChoiceField(
        queryset=Dataset.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )
    lifespan_hours = forms.IntegerField(
        label="Lifespan (hours)",
        required=False,
        min_value=MIN_LIFESPAN_HOURS,
        max_value=MAX_LIFESPAN_HOURS,
        error_messages={"min_value": LIFESPAN_RANGE, "max_value": LIFESPAN_RANGE, "invalid": LIFESPAN_RANGE},
        help_text="The session is stopped this long after it starts, with a final checkpoint, unless extended.",
    )

    def __init__(self, *args, workspace, studio=None, environment=None, **kwargs):
        """``studio``: the studio being started (its own mounts do not count as held); ``environment``: fixed.
        Without a lifespan, the studio keeps its own (a new one gets the workspace's default)."""
        super().__init__(*args, **kwargs)
        self.fields["lifespan_hours"].initial = studio.lifespan_hours if studio else workspace.default_lifespan_hours
        self.workspace = workspace
        self.studio = studio
        self.fixed_environment = environment or (studio.compute_environment if studio else None)
        self.held = held_data_paths(workspace, exclude_studio=studio)
        self.workspace_datasets = workspace.datasets.order_by("name")
        model_choices(self, "datasets").queryset = self.workspace_datasets

    def displayed_environment(self):
        """The compute environment the form is about, before validation: fixed, chosen, or the only one."""
        if self.fixed_environment or "compute_environment" not in self.fields:
            return self.fixed_environment
        chosen = self["compute_environment"].value()
        return self.workspace.compute_environments.filter(pk=chosen).first() if chosen else None

    def dataset_choices(self):
        """Each dataset with the studio holding its data path (None when free), whether it would be mounted
        writable, and whether it lies in another region than the compute environment."""
        chosen = {str(pk) for pk in (self["datasets"].value() or [])}
        environment = self.displayed_environment()
        return [
            {
                "dataset": dataset,
                "holder": holder_of(dataset.uri, self.held),
                "checked": str(dataset.pk) in chosen,
                "writable": environment.is_writable(dataset.uri) if environment else None,
                "other_region": bool(environment and dataset.region and dataset.region != environment.region),
                "environment": environment,
            }
            for dataset in self.workspace_datasets
        ]

    def environment(self):
        return self.fixed_environment or self.cleaned_data.get("compute_environment")

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data
        environment = self.environment()
        if environment is None:
            return cleaned
        cpus, memory = cleaned.get("cpus"), cleaned.get("memory_mb")
        if cpus is not None and not environment.min_cpus <= cpus <= environment.max_cpus:
            self.add_error("cpus", f"{environment.name} offers {environment.min_cpus} to {environment.max_cpus} CPUs.")
        if memory is not None and not environment.min_memory_mb <= memory <= environment.max_memory_mb:
            self.add_error(
                "memory_mb",
                f"{environment.name} offers {environment.min_memory_mb} to {environment.max_memory_mb} MB of memory.",
            )
        for dataset in cleaned.get("datasets") or []:
            holder = holder_of(dataset.uri, self.held)
            if holder is not None:
                self.add_error("datasets", f"{dataset.name} is mounted by running studio {holder.name}.")
        return cleaned


class CloneForm(ResourcesForm):
    """A studio's name and description, with its resources and mounts: a new studio's (Start as new), or a stopped
    studio's changes (``studio``: its own name is not taken)."""

    name = forms.CharField(max_length=80, help_text="Unique in this workspace, e.g. rnaseq-qc.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    idle_stop_minutes = forms.IntegerField(
        label="Idle stop (minutes)",
        required=False,
        min_value=MIN_IDLE_MINUTES,
        max_value=MAX_IDLE_MINUTES,
        error_messages={"min_value": IDLE_RANGE, "max_value": IDLE_RANGE, "invalid": IDLE_RANGE},
        help_text="Stopped, with a final checkpoint and a warning first, after this long in which nobody used it "
        "and its IDE did no work (no kernel busy, no terminal output, no CPU). Empty: never.",
    )

    field_order = ["name", "description", "datasets", "cpus", "memory_mb", "lifespan_hours", "idle_stop_minutes"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        owner = self.studio or self.workspace
        self.fields["idle_stop_minutes"].initial = owner.idle_stop_minutes

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Give the studio a name.")
        taken = Studio.objects.filter(workspace=self.workspace, name=name)
        if self.studio is not None:
            taken = taken.exclude(pk=self.studio.pk)
        if taken.exists():
            raise ValidationError(f"A studio named {name!r} already exists in this workspace.")
        return name


class TemplateSelect(forms.Select):
    """The templates, those in ``unavailable`` ({template: why}) offered disabled, saying so."""

    def __init__(self, attrs=None, choices=()):
        super().__init__(attrs, choices)
        self.unavailable: dict[str, str] = {}

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        if value in self.unavailable:
            option["attrs"]["disabled"] = True
            option["label"] = f"{label} (unavailable)"
        return option


class StudioForm(CloneForm):
    template = forms.ChoiceField(choices=Template.choices, initial=Template.JUPYTERLAB, widget=TemplateSelect)
    compute_environment = forms.ModelChoiceField(queryset=ComputeEnvironment.objects.none())

    field_order = [
        "name",
        "description",
        "template",
        "compute_environment",
        "datasets",
        "cpus",
        "memory_mb",
        "lifespan_hours",
        "idle_stop_minutes",
    ]

    def __init__(self, *args, workspace, **kwargs):
        super().__init__(*args, workspace=workspace, **kwargs)
        environments = workspace.compute_environments.order_by("name")
        model_choices(self, "compute_environment").queryset = environments
        if len(environments) == 1:
            self.fields["compute_environment"].initial = environments[0]
        # A template that no compute environment here can run, as their last checks found, cannot be picked; why
        # shows before anything is sent. (One that some can run is refused on submit for the others, by ``clean``.)
        checked = [environment for environment in environments if environment.status_checked]
        refusals = {
            value: [environment.template_refusal(value) for environment in checked] for value, _ in Template.choices
        }
        unavailable = {value: " ".join(why) for value, why in refusals.items() if why and all(why)}
        template = self.fields["template"]
        template.widget.unavailable = unavailable
        template.help_text = " ".join(unavailable.values())

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data
        environment, template = cleaned.get("compute_environment"), cleaned.get("template")
        if environment and template:
            refusal = environment.template_refusal(template)
            if refusal:
                self.add_error("template", refusal)
        return cleaned


class ExtendForm(forms.Form):
    """By how many hours to extend a running studio's lifespan (``lifecycle.extend_studio`` checks the maximum)."""

    hours = forms.IntegerField(
        min_value=1,
        max_value=MAX_LIFESPAN_HOURS,
        error_messages={
            "required": "Say by how many hours to extend it.",
            "invalid": "Extend by a whole number of hours.",
            "min_value": "Extend by 1 hour or more.",
            "max_value": f"A session runs at most {MAX_LIFESPAN_HOURS} hours from its start.",
        },
    )


class CredentialsForm(forms.ModelForm):
    """An AWS access key pair for a compute environment: write-only, never shown back."""

    instance: ComputeEnvironment
    # Who reaches AWS without a key pair.
    own_identity = "the platform's own AWS role or instance profile"

    access_key_id = forms.CharField(
        label="AWS access key ID", required=False, max_length=128, widget=forms.TextInput(attrs={"autocomplete": "off"})
    )
    secret_access_key = forms.CharField(
        label="AWS secret access key",
        required=False,
        max_length=128,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    forget_credentials = forms.BooleanField(label="Forget the stored key pair", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = self.instance.has_credentials
        self.fields["access_key_id"].help_text = (
            "A key pair is stored (never shown). Enter a new pair to replace it; leave both empty to keep it."
            if stored
            else f"Leave both empty to use {self.own_identity}."
        )
        self.fields["forget_credentials"].label = f"Forget the stored key pair and use {self.own_identity}"
        if not stored:
            self.fields["forget_credentials"].widget = forms.HiddenInput()

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data
        key_id, secret = cleaned.get("access_key_id", "").strip(), cleaned.get("secret_access_key", "")
        if bool(key_id) != bool(secret):
            missing = "secret_access_key" if key_id else "access_key_id"
            self.add_error(missing, "Enter both the access key ID and the secret access key.")
        elif key_id and not re.fullmatch(r"[A-Z0-9]{16,128}", key_id):
            self.add_error(
                "access_key_id",
                "An AWS access key ID is 16 or more capital letters and digits, like AKIAIOSFODNN7EXAMPLE.",
            )
        elif key_id and cleaned.get("forget_credentials"):
            self.add_error("forget_credentials", "Either enter a new key pair or forget the stored one, not both.")
        cleaned["access_key_id"] = key_id
        return cleaned

    def save(self, commit=True):
        if self.cleaned_data["access_key_id"]:
            self.instance.set_credentials(self.cleaned_data["access_key_id"], self.cleaned_data["secret_access_key"])
        elif self.cleaned_data.get("forget_credentials"):
            self.instance.forget_credentials()
        return super().save(commit)


S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?")
JOB_QUEUE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}|arn:aws[a-z-]*:batch:[a-z0-9-]+:\d{12}:job-queue/[A-Za-z0-9_-]+"
)


class EnvironmentForm(forms.ModelForm):
    """What every compute environment form checks: a name unique in the workspace, the writable data paths (one a
    line, each matching ``data_path``), the largest studio allowed."""

    instance: ComputeEnvironment
    data_path = S3_URI
    data_path_error = "Not an s3:// bucket or prefix: {}."

    writable_data_paths = forms.CharField(
        label="Writable data paths", required=False, widget=forms.Textarea(attrs={"rows": 3})
    )

    def __init__(self, *args, workspace, **kwargs):
        super().__init__(*args, **kwargs)
        self.workspace = workspace
        self.initial["writable_data_paths"] = "\n".join(self.instance.writable_data_paths)

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        taken = self.workspace.compute_environments.filter(name=name).exclude(pk=self.instance.pk)
        if taken.exists():
            raise ValidationError(f"A compute environment named {name!r} already exists in this workspace.")
        return name

    def clean_writable_data_paths(self):
        paths = [line.strip() for line in self.cleaned_data["writable_data_paths"].splitlines() if line.strip()]
        wrong = [path for path in paths if not self.data_path.fullmatch(path)]
        if wrong:
            raise ValidationError(self.data_path_error.format(", ".join(wrong)))
        return paths

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data
        if cleaned.get("max_cpus") is not None and cleaned["max_cpus"] < self.instance.min_cpus:
            self.add_error("max_cpus", f"Studios need at least {self.instance.min_cpus} CPU.")
        if cleaned.get("max_memory_mb") is not None and cleaned["max_memory_mb"] < self.instance.min_memory_mb:
            self.add_error("max_memory_mb", f"Studios need at least {self.instance.min_memory_mb} MB.")
        return cleaned


LIMIT_LABELS = {"max_cpus": "Most CPUs a studio may ask for", "max_memory_mb": "Most memory a studio may ask for (MB)"}


class BatchEnvironmentForm(EnvironmentForm, CredentialsForm):
    """An AWS Batch compute environment, as a workspace admin adds or edits it."""

    class Meta:
        model = ComputeEnvironment
        fields = ["name", "region", "job_queue", "work_dir", "writable_data_paths", "max_cpus", "max_memory_mb"]
        labels = {"job_queue": "Job queue", "work_dir": "Work directory", **LIMIT_LABELS}
        help_texts = {"work_dir": "s3://bucket/prefix: where checkpoints are kept."}
        widgets = {"work_dir": forms.TextInput(attrs={"placeholder": "s3://lab-work/studios"})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.initial["region"] = ""
        self.fields["job_queue"].required = True
        self.fields["region"].widget.attrs["placeholder"] = "eu-west-1"
        paths = self.fields["writable_data_paths"]
        paths.widget.attrs["placeholder"] = "s3://lab-results/\ns3://scratch/team-a/"
        paths.help_text = "One s3:// bucket or prefix a line: datasets under them may be mounted read-write."

    def clean_region(self):
        region = self.cleaned_data["region"].strip()
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
            raise ValidationError("Enter an AWS region such as eu-west-1.")
        return region

    def clean_job_queue(self):
        queue = self.cleaned_data["job_queue"].strip()
        if not JOB_QUEUE.fullmatch(queue):
            raise ValidationError("Enter the job queue's name (letters, digits, - and _) or its ARN.")
        return queue

    def clean_work_dir(self):
        work_dir = self.cleaned_data["work_dir"].strip()
        if not S3_URI.fullmatch(work_dir):
            raise ValidationError("Sessions on AWS Batch keep checkpoints on S3: enter s3://bucket/prefix.")
        return work_dir


SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHARED_FOLDER = re.compile(r"(?!.*(^|/)\.\.?(/|$))/\S*")  # absolute, no . or .. segment


class SlurmEnvironmentForm(EnvironmentForm, CredentialsForm):
    """A Slurm compute environment: a partition of the cluster the platform's host submits to; the key pair, for a
    work directory on S3."""

    data_path = SHARED_FOLDER
    data_path_error = "Not an absolute folder of the shared filesystem: {}."
    own_identity = "the nodes' own AWS identity (their instance profile), for a work directory on S3"

    class Meta:
        model = ComputeEnvironment
        fields = ["name", "partition", "account", "qos", "work_dir", "writable_data_paths", "max_cpus", "max_memory_mb"]
        labels = {"qos": "QOS", "work_dir": "Work directory", **LIMIT_LABELS}
        help_texts = {
            "work_dir": "Where checkpoints are kept: a folder of the cluster's shared filesystem, seen at the same path "
            "by the platform's host and every node (the sessions' logs are kept there too), or s3://bucket/prefix."
        }
        widgets = {"work_dir": forms.TextInput(attrs={"placeholder": "/shared/studios"})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["partition"].required = True
        paths = self.fields["writable_data_paths"]
        paths.widget.attrs["placeholder"] = "/shared/results/\n/shared/scratch/team-a/"
        paths.help_text = "One folder of the shared filesystem a line: datasets under them may be mounted read-write."

    def _slurm_name(self, field, what):
        value = self.cleaned_data[field].strip()
        if value and not SLURM_NAME.fullmatch(value):
            raise ValidationError(f"Enter the {what}'s name as Slurm knows it (letters, digits, ., - and _).")
        return value

    def clean_partition(self):
        return self._slurm_name("partition", "partition")

    def clean_account(self):
        return self._slurm_name("account", "account")

    def clean_qos(self):
        return self._slurm_name("qos", "QOS")

    def clean_work_dir(self):
        work_dir = self.cleaned_data["work_dir"].strip().rstrip("/")
        if not (SHARED_FOLDER.fullmatch(work_dir) or S3_URI.fullmatch(work_dir)):
            raise ValidationError(
                "Enter an absolute folder of the cluster's shared filesystem, like /shared/studios, or "
                "s3://bucket/prefix."
            )
        return work_dir


ENVIRONMENT_FORMS = {
    ComputeEnvironment.Kind.AWS_BATCH: BatchEnvironmentForm,
    ComputeEnvironment.Kind.SLURM: SlurmEnvironmentForm,
}


class AccessTokenForm(forms.Form):
    """A new personal access token: a name to recognise it by, and how long it lasts."""

    EXPIRY_CHOICES = [("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("", "Never")]

    name = forms.CharField(max_length=100, help_text="What it is for, e.g. nightly-pipeline or my laptop.")
    expires_in_days = forms.TypedChoiceField(
        label="Expires after",
        choices=EXPIRY_CHOICES,
        coerce=int,
        empty_value=None,
        required=False,
        initial="30",
    )
