"""Checkpoint records: naming and renaming, Start as new, and the cleanup of shared content."""

import os
import subprocess
import sys

import pytest
from django.urls import reverse
from django.utils import timezone

from checkpoints import records, snapshot
from checkpoints.cleanup import CleanupError
from checkpoints.models import Checkpoint, CheckpointStore
from checkpoints.store import LocalStore
from checkpoints.tasks import clean_store
from studios import lifecycle
from studios.exceptions import ActionRefused
from studios.models import Role, Studio, StudioStatus

from .factories import make_member, make_studio, make_workspace


@pytest.fixture
def maintainer(workspace):
    return make_member(workspace, Role.MAINTAIN, username="mia")


@pytest.fixture
def saved_studio(workspace, maintainer):
    """A stopped studio with two saved checkpoints."""
    studio = make_studio(workspace, name="atlas", author=maintainer)
    for n in (1, 2):
        Checkpoint.objects.create(
            studio=studio,
            name=f"atlas_{n}",
            state="finalized",
            manifest_key=f"manifests/{n}.json.zst",
            manifest_sha256="0" * 64,
            saved=timezone.now(),
            size_bytes=1000 * n,
        )
    return studio


def test_each_start_creates_the_next_named_checkpoint_and_restores_the_newest(saved_studio, maintainer):
    studio = lifecycle.start_studio(maintainer, saved_studio)
    assert studio.session.checkpoint.name == "atlas_3"
    assert studio.session.checkpoint.state == Checkpoint.State.EMPTY
    assert studio.session.restored_from.name == "atlas_2"


class TestRename:
    @pytest.fixture
    def rename(self, client, saved_studio, maintainer):
        client.force_login(maintainer)
        checkpoint = saved_studio.checkpoints.get(name="atlas_1")

        def rename(name):
            response = client.post(reverse("checkpoint_rename", args=[checkpoint.pk]), {"name": name}, follow=True)
            checkpoint.refresh_from_db()
            return response.content.decode(), checkpoint.name

        return rename

    def test_spaces_become_underscores(self, rename):
        page, name = rename("  before the upgrade ")
        assert name == "before_the_upgrade"
        assert "Checkpoint renamed to before_the_upgrade." in page

    @pytest.mark.parametrize(
        "bad, reason",
        [
            ("", "Give the checkpoint a name."),
            ("   ", "Give the checkpoint a name."),
            ("x" * 121, "at most 120 characters"),
            ("a/b", "cannot contain / or"),
            ("a\\b", "cannot contain / or"),
            ("bell\x07", "control characters"),
            ("atlas_2", "already has a checkpoint named atlas_2"),
        ],
    )
    def test_bad_names_are_refused_with_the_reason(self, rename, bad, reason):
        page, name = rename(bad)
        assert name == "atlas_1"
        assert reason in page.replace("&#x27;", "'")

    @pytest.mark.parametrize("role", [Role.LAUNCH, Role.CONNECT, Role.VIEW])
    def test_renaming_needs_maintain_role(self, client, saved_studio, workspace, role):
        client.force_login(make_member(workspace, role))
        checkpoint = saved_studio.checkpoints.get(name="atlas_1")
        response = client.post(reverse("checkpoint_rename", args=[checkpoint.pk]), {"name": "mine"})
        assert response.status_code == 403
        checkpoint.refresh_from_db()
        assert checkpoint.name == "atlas_1"

    def test_non_members_get_404(self, client, saved_studio):
        client.force_login(make_member(make_workspace(), Role.OWNER))
        checkpoint = saved_studio.checkpoints.get(name="atlas_1")
        assert client.post(reverse("checkpoint_rename", args=[checkpoint.pk]), {"name": "x"}).status_code == 404


class TestStartAsNew:
    def test_the_clone_gets_the_history_and_starts_from_the_chosen_checkpoint(self, client, saved_studio, maintainer):
        client.force_login(maintainer)
        source = saved_studio.checkpoints.get(name="atlas_1")
        page = client.get(reverse("start_as_new", args=[source.pk])).content.decode()
        assert ">\n</textarea>" in page  # no description is made up from the parent's name
        response = client.post(
            reverse("start_as_new", args=[source.pk]),
            {"name": "atlas-v2", "description": "", "cpus": 2, "memory_mb": 2048},
        )
        clone = Studio.objects.get(name="atlas-v2")
        assert response["Location"] == clone.get_absolute_url()
        assert (clone.template, clone.compute_environment) == (saved_studio.template, saved_studio.compute_environment)
        assert clone.status == StudioStatus.STARTING
        assert clone.session.restored_from.copied_from == source
        assert clone.description == ""
        inherited = clone.checkpoints.exclude(copied_from=None).order_by("name")
        assert [(c.name, c.created) for c in inherited] == [
            (c.name, c.created) for c in saved_studio.checkpoints.order_by("name")
        ]  # created when the parent's sessions made them, not when they were copied
        assert clone.session.checkpoint.name == "atlas-v2_1"  # the clone's own first checkpoint
        assert saved_studio.checkpoints.count() == 2  # the parent is untouched

    def test_the_checkpoint_in_use_cannot_be_the_source(self, saved_studio, maintainer):
        running = lifecycle.start_studio(maintainer, saved_studio)
        with pytest.raises(ActionRefused, match="in use by atlas's running session"):
            lifecycle.start_as_new(maintainer, running.session.checkpoint, name="x", cpus=1, memory_mb=1024)
        assert not Studio.objects.filter(name="x").exists()

    def test_bad_input_creates_nothing(self, client, saved_studio, maintainer):
        client.force_login(maintainer)
        source = saved_studio.checkpoints.get(name="atlas_1")
        response = client.post(
            reverse("start_as_new", args=[source.pk]), {"name": "atlas", "cpus": 999, "memory_mb": 2048}
        )
        assert response.status_code == 400
        page = response.content.decode()
        assert "already exists" in page and "offers 1 to 8 CPUs" in page
        assert Studio.objects.count() == 1

    @pytest.mark.parametrize("role", [Role.LAUNCH, Role.CONNECT, Role.VIEW])
    def test_start_as_new_needs_maintain_role(self, client, saved_studio, workspace, role):
        client.force_login(make_member(workspace, role))
        source = saved_studio.checkpoints.get(name="atlas_1")
        response = client.post(
            reverse("start_as_new", args=[source.pk]), {"name": "mine", "cpus": 1, "memory_mb": 1024}
        )
        assert response.status_code == 403
        assert not Studio.objects.filter(name="mine").exists()


class TestCleanup:
    @pytest.fixture
    def stored(self, tmp_path, settings, maintainer, workspace):
        """A studio with one real checkpoint in a local store, and a clone sharing its content."""
        settings.STUDIOS_CHECKPOINT_GC_GRACE_SECONDS = 0
        environment = workspace.compute_environments.get()
        environment.work_dir = str(tmp_path / "work")
        environment.save()
        layer = tmp_path / "layer"
        layer.mkdir()
        (layer / "weights.bin").write_bytes(os.urandom(100_000))
        store = LocalStore(environment.work_dir)
        saved = snapshot.take(layer, store)
        parent = make_studio(workspace, name="parent", author=maintainer)
        source = Checkpoint.objects.create(
            studio=parent,
            name="parent_1",
            state="finalized",
            manifest_key=saved.manifest_key,
            manifest_sha256=saved.manifest_sha256,
            saved=timezone.now(),
        )
        clone = lifecycle.start_as_new(maintainer, source, name="clone", cpus=1, memory_mb=1024)
        Studio.objects.filter(pk=clone.pk).update(status=StudioStatus.STOPPED)
        return environment.work_dir, store, saved, parent, Studio.objects.get(pk=clone.pk)

    def objects(self, store):
        return sorted(key for key, _ in store.listing(""))

    def test_content_shared_with_a_clone_outlives_the_parent(self, stored, maintainer):
        work_dir, store, _saved, parent, clone = stored
        everything = self.objects(store)
        lifecycle.delete_studio(maintainer, parent)
        assert clean_store(work_dir) == 0
        assert self.objects(store) == everything
        lifecycle.delete_studio(maintainer, clone)
        assert clean_store(work_dir) == len(everything)
        assert self.objects(store) == []
        assert not any((store.root / "manifests").iterdir())  # nor the deleted studios' folders
        assert CheckpointStore.objects.get(work_dir=work_dir).removed_objects == len(everything)

    def test_content_younger_than_the_grace_period_is_kept(self, stored, maintainer, settings):
        work_dir, _store, _saved, parent, clone = stored
        settings.STUDIOS_CHECKPOINT_GC_GRACE_SECONDS = 3600
        lifecycle.delete_studio(maintainer, parent)
        lifecycle.delete_studio(maintainer, clone)
        assert clean_store(work_dir) == 0

    def test_a_deleted_studios_folder_goes_with_it_before_the_grace_period(
        self, stored, maintainer, settings, eager_tasks, django_capture_on_commit_callbacks
    ):
        _work_dir, store, saved, _parent, clone = stored
        settings.STUDIOS_CHECKPOINT_GC_GRACE_SECONDS = 3600
        # What its session saved, under its own folder.
        store.put(f"manifests/studio-{clone.pk}/{'c' * 32}.json.zst", store.get(saved.manifest_key))
        with django_capture_on_commit_callbacks(execute=True):
            lifecycle.delete_studio(maintainer, clone)
        assert not (store.root / "manifests" / f"studio-{clone.pk}").exists()
        assert store.has(saved.manifest_key)  # the parent's, still live

    def test_a_failed_cleanup_is_recorded_and_removes_nothing(self, stored, maintainer):
        work_dir, store, saved, parent, _clone = stored
        lifecycle.delete_studio(maintainer, parent)
        store.delete(saved.manifest_key)  # the clone's manifest is gone: nothing can be proven unreferenced
        before = self.objects(store)
        with pytest.raises(CleanupError):
            clean_store(work_dir)
        record = CheckpointStore.objects.get(work_dir=work_dir)
        assert record.failures == 1 and "cannot be read" in record.last_error and record.next_attempt
        assert self.objects(store) == before


def test_the_beat_schedule_takes_checkpoints_at_the_interval_the_environment_sets(tmp_path):
    """Settings read the environment once, when imported: read them in a fresh interpreter."""
    script = (
        "from studios_project import settings; "
        "entry = settings.CELERY_BEAT_SCHEDULE['checkpoint-sessions']; print(entry['task'], entry['schedule'])"
    )
    environment = {**os.environ, "STUDIOS_CHECKPOINT_INTERVAL_SECONDS": "42", "STUDIOS_DATA_DIR": str(tmp_path)}
    scheduled = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    )
    assert scheduled.stdout.split() == ["studios.tasks.checkpoint_running_sessions", "42.0"]


def test_the_detail_page_shows_the_checkpoints_and_the_last_save(client, saved_studio, maintainer):
    studio = lifecycle.start_studio(maintainer, saved_studio)
    Checkpoint.objects.filter(pk=studio.session.checkpoint_id).update(
        state="interim", manifest_key="manifests/3.json.zst", saved=timezone.now(), size_bytes=3 * 2**20
    )
    client.force_login(maintainer)
    assert "Last checkpoint atlas_3: 3.0\xa0MB" in client.get(studio.get_absolute_url()).content.decode()
    page = client.get(studio.get_absolute_url(), {"tab": "checkpoints"}).content.decode()
    for name in ("atlas_1", "atlas_2", "atlas_3"):
        assert f'value="{name}"' in page  # each with its rename field
    assert page.count("Start as new") == 2  # not from the checkpoint in use


def test_the_restoring_step_names_the_checkpoint_as_it_is_called_now(client, saved_studio, maintainer):
    studio = lifecycle.start_studio(maintainer, saved_studio)
    steps = [{"name": "Restoring checkpoint", "state": "succeeded", "message": "12 files in 0.1 s"}]
    assert lifecycle.session_progress(studio.session.token, steps)
    records.rename_checkpoint(maintainer, studio.session.restored_from, "baseline")
    client.force_login(maintainer)
    page = " ".join(client.get(studio.get_absolute_url()).content.decode().split())
    assert "Restoring checkpoint baseline <span" in page and "atlas_2" not in page
