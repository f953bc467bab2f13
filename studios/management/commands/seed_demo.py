"""Create a demo organization, workspace, local compute environment, dataset and one user per role, and, in a new
workspace, three stopped JupyterLab studios to try (the README's screenshots show them: docs/screenshots.py)."""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from studios import lifecycle, tasks
from studios.models import ComputeEnvironment, Dataset, Membership, Organization, Role, Workspace

# A new demo workspace's studios (name, description), stopped, for a first look at the list.
DEMO_STUDIOS = [
    ("rnaseq-qc", "Quality control of the March sequencing run"),
    ("variant-calling", "Exploring GATK filters on the trio"),
    ("single-cell-umap", "Clustering and UMAP of the PBMC dataset"),
]


def demo_password():
    """One password for every demo user: from STUDIOS_DEMO_PASSWORD, else generated once and kept."""
    if os.environ.get("STUDIOS_DEMO_PASSWORD"):
        return os.environ["STUDIOS_DEMO_PASSWORD"]
    path = settings.DATA_DIR / "demo_password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    return path.read_text().strip()


class Command(BaseCommand):
    help = __doc__

    @transaction.atomic
    def handle(self, *args, **options):
        organization, _ = Organization.objects.get_or_create(slug="demo", defaults={"name": "Demo lab"})
        workspace, new_workspace = Workspace.objects.get_or_create(
            organization=organization, slug="analysis", defaults={"name": "Analysis"}
        )
        work_dir = settings.DATA_DIR / "work"
        data_dir = settings.DATA_DIR / "datasets"
        (data_dir / "reference").mkdir(parents=True, exist_ok=True)
        (data_dir / "scratch").mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        sample = data_dir / "reference" / "samples.csv"
        if not sample.exists():
            sample.write_text("sample,condition,reads\nS1,control,1204311\nS2,treated,1187420\nS3,treated,1299015\n")
        local, _ = ComputeEnvironment.objects.get_or_create(
            workspace=workspace,
            name="local",
            defaults={
                "kind": ComputeEnvironment.Kind.LOCAL,
                "region": "local",
                "work_dir": str(work_dir),
                "writable_data_paths": [str(data_dir / "scratch")],
                "max_cpus": os.cpu_count() or 1,
                "max_memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
            },
        )
        # What this host offers (templates, isolation) may have changed since the last run.
        tasks.check_compute_environment(local.pk)
        reference, _ = Dataset.objects.get_or_create(
            workspace=workspace, name="reference", defaults={"uri": str(data_dir / "reference"), "region": "local"}
        )
        password = demo_password()
        User = get_user_model()
        for role in Role.values:
            user, _ = User.objects.get_or_create(username=role)
            user.set_password(password)
            user.is_staff = user.is_superuser = role == Role.OWNER
            user.save()
            Membership.objects.update_or_create(workspace=workspace, user=user, defaults={"role": role})
        if new_workspace:
            for name, description in DEMO_STUDIOS:
                lifecycle.add_studio(
                    User.objects.get(username=Role.MAINTAIN),
                    workspace,
                    datasets=[reference],
                    name=name,
                    description=description,
                    compute_environment=local,
                    cpus=1,
                    memory_mb=2048,
                )
        self.stdout.write(f"workspace: {workspace.get_absolute_url()}")
        self.stdout.write(f"users: {', '.join(Role.values)}")
        self.stdout.write(f"password: {password}")
