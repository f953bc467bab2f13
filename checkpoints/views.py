"""The Checkpoints tab's actions: rename, and start as new from a checkpoint."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from studios import lifecycle, permissions
from studios.exceptions import ActionRefused
from studios.forms import CloneForm

from . import records
from .models import Checkpoint


def checkpoint_for(user, checkpoint_id):
    """The checkpoint and the user's role, or Http404 for non-members, as for studios."""
    checkpoint = Checkpoint.objects.select_related("studio").filter(pk=checkpoint_id).first()
    _, role = permissions.studio_for(user, checkpoint.studio_id if checkpoint else 0)
    return checkpoint, role


@login_required
@require_POST
def checkpoint_rename(request, checkpoint_id):
    checkpoint, _ = checkpoint_for(request.user, checkpoint_id)
    try:
        name = records.rename_checkpoint(request.user, checkpoint, request.POST.get("name", ""))
    except ValidationError as error:
        messages.error(request, f"Checkpoint {checkpoint.name} was not renamed: {' '.join(error.messages)}")
    else:
        messages.success(request, f"Checkpoint renamed to {name}.")
    return redirect(checkpoint.studio.get_absolute_url() + "?tab=checkpoints")


@login_required
def start_as_new(request, checkpoint_id):
    """The form fixes template, compute environment and source; name, description, mounts and resources may change."""
    checkpoint, role = checkpoint_for(request.user, checkpoint_id)
    parent = checkpoint.studio
    permissions.require_role(request.user, parent.workspace, permissions.MAINTAIN, "start studios as new")
    form = CloneForm(
        request.POST or None,
        workspace=parent.workspace,
        environment=parent.compute_environment,
        initial={"cpus": parent.cpus, "memory_mb": parent.memory_mb},
    )
    if request.method == "POST" and form.is_valid():
        try:
            clone = lifecycle.start_as_new(request.user, checkpoint, **form.cleaned_data)
        except ActionRefused as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Starting {clone.name} from checkpoint {checkpoint.name}.")
            return redirect(clone)
    return render(
        request,
        "checkpoints/start_as_new.html",
        {"form": form, "checkpoint": checkpoint, "studio": parent, "workspace": parent.workspace, "role": role},
        status=400 if form.errors else 200,
    )
