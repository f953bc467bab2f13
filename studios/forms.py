import re
from typing import cast

from django import forms
from django.core.exceptions import ValidationError

from .lifecycle import held_data_paths, holder_of
from .models import ComputeEnvironment, Dataset, Studio, Template


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

    def __init__(self, *args, workspace, studio=None, environment=None, **kwargs):
        """``studio``: the studio being started (its own mounts do not count as held); ``environment``: fixed."""
        super().__init__(*args, **kwargs)
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

    field_order = ["name", "description", "datasets", "cpus", "memory_mb"]

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

    field_order = ["name", "description", "template", "compute_environment", "datasets", "cpus", "memory_mb"]

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


class CredentialsForm(forms.ModelForm):
    """An AWS access key pair for a compute environment: write-only, never shown back."""

    instance: ComputeEnvironment

    access_key_id = forms.CharField(
        label="AWS access key ID", required=False, max_length=128, widget=forms.TextInput(attrs={"autocomplete": "off"})
    )
    secret_access_key = forms.CharField(
        label="AWS secret access key",
        required=False,
        max_length=128,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    forget_credentials = forms.BooleanField(
        label="Forget the stored key pair and use the platform's own AWS role", required=False
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = self.instance.has_credentials
        self.fields["access_key_id"].help_text = (
            "A key pair is stored (never shown). Enter a new pair to replace it; leave both empty to keep it."
            if stored
            else "Leave both empty to use the platform's own AWS role or instance profile."
        )
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


class BatchEnvironmentForm(CredentialsForm):
    """An AWS Batch compute environment, as a workspace admin adds or edits it."""

    writable_data_paths = forms.CharField(
        label="Writable data paths",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "s3://lab-results/\ns3://scratch/team-a/"}),
        help_text="One s3:// bucket or prefix a line: datasets under them may be mounted read-write.",
    )

    class Meta:
        model = ComputeEnvironment
        fields = ["name", "region", "job_queue", "work_dir", "writable_data_paths", "max_cpus", "max_memory_mb"]
        labels = {
            "job_queue": "Job queue",
            "work_dir": "Work directory",
            "max_cpus": "Most CPUs a studio may ask for",
            "max_memory_mb": "Most memory a studio may ask for (MB)",
        }
        help_texts = {"work_dir": "s3://bucket/prefix: where checkpoints are kept."}
        widgets = {"work_dir": forms.TextInput(attrs={"placeholder": "s3://lab-work/studios"})}

    def __init__(self, *args, workspace, **kwargs):
        super().__init__(*args, **kwargs)
        self.workspace = workspace
        self.initial["writable_data_paths"] = "\n".join(self.instance.writable_data_paths)
        if self.instance.pk is None:
            self.initial["region"] = ""
        self.fields["job_queue"].required = True
        self.fields["region"].widget.attrs["placeholder"] = "eu-west-1"

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        taken = self.workspace.compute_environments.filter(name=name).exclude(pk=self.instance.pk)
        if taken.exists():
            raise ValidationError(f"A compute environment named {name!r} already exists in this workspace.")
        return name

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

    def clean_writable_data_paths(self):
        paths = [line.strip() for line in self.cleaned_data["writable_data_paths"].splitlines() if line.strip()]
        wrong = [path for path in paths if not S3_URI.fullmatch(path)]
        if wrong:
            raise ValidationError(f"Not an s3:// bucket or prefix: {', '.join(wrong)}.")
        return paths

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data
        if cleaned.get("max_cpus") is not None and cleaned["max_cpus"] < self.instance.min_cpus:
            self.add_error("max_cpus", f"Studios need at least {self.instance.min_cpus} CPU.")
        if cleaned.get("max_memory_mb") is not None and cleaned["max_memory_mb"] < self.instance.min_memory_mb:
            self.add_error("max_memory_mb", f"Studios need at least {self.instance.min_memory_mb} MB.")
        return cleaned


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
