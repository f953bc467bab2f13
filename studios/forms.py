from django import forms
from django.core.exceptions import ValidationError

from .backends import BackendError, backend_for
from .lifecycle import held_data_paths, holder_of
from .models import ComputeEnvironment, Dataset, Studio, Template


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
        self.fields["datasets"].queryset = workspace.datasets.order_by("name")

    def displayed_environment(self):
        """The compute environment the form is about, before validation: fixed, chosen, or the only one."""
        if self.fixed_environment or "compute_environment" not in self.fields:
            return self.fixed_environment
        chosen = self["compute_environment"].value()
        return self.fields["compute_environment"].queryset.filter(pk=chosen).first() if chosen else None

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
            for dataset in self.fields["datasets"].queryset
        ]

    def environment(self):
        return self.fixed_environment or self.cleaned_data.get("compute_environment")

    def clean(self):
        cleaned = super().clean()
        environment = self.environment()
        if environment is None:
            return cleaned
        cpus, memory = cleaned.get("cpus"), cleaned.get("memory_mb")
        if cpus is not None and not environment.min_cpus <= cpus <= environment.max_cpus:
            self.add_error(
                "cpus", f"{environment.name} offers {environment.min_cpus} to {environment.max_cpus} CPUs."
            )
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
    """A new studio's name and description, with its resources and mounts (Start as new)."""

    name = forms.CharField(max_length=80, help_text="Unique in this workspace, e.g. rnaseq-qc.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    field_order = ["name", "description", "datasets", "cpus", "memory_mb"]

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Give the studio a name.")
        if Studio.objects.filter(workspace=self.workspace, name=name).exists():
            raise ValidationError(f"A studio named {name!r} already exists in this workspace.")
        return name


class StudioForm(CloneForm):
    template = forms.ChoiceField(choices=Template.choices, initial=Template.JUPYTERLAB)
    compute_environment = forms.ModelChoiceField(queryset=ComputeEnvironment.objects.none())

    field_order = ["name", "description", "template", "compute_environment", "datasets", "cpus", "memory_mb"]

    def __init__(self, *args, workspace, **kwargs):
        super().__init__(*args, workspace=workspace, **kwargs)
        environments = workspace.compute_environments.order_by("name")
        self.fields["compute_environment"].queryset = environments
        if len(environments) == 1:
            self.fields["compute_environment"].initial = environments[0]

    def clean(self):
        cleaned = super().clean()
        environment, template = cleaned.get("compute_environment"), cleaned.get("template")
        if environment and template:
            try:
                problem = backend_for(environment).template_problem(template)
            except BackendError as error:
                problem = str(error)
            if problem:
                self.add_error("template", f"{Template(template).label} cannot run on {environment.name}. {problem}")
        return cleaned
