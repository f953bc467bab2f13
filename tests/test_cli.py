"""The ``studios`` command against a real server: tables for people, JSON for scripts, exit codes, login."""

import json
import os
import stat
import subprocess
import sys
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from checkpoints.models import Checkpoint
from studios import cli, tokens
from studios.models import Role, Studio

from .factories import make_member, make_running, make_studio, make_workspace
from .live import Browser, SessionClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(transactional_db, live_server, tmp_path):
    """A workspace with a studio, a maintainer's and a viewer's tokens; the command's config under tmp_path."""
    workspace = make_workspace()
    maintainer = make_member(workspace, Role.MAINTAIN, username="mia")
    viewer = make_member(workspace, Role.VIEW, username="vic")
    studio = make_studio(workspace, name="rnaseq", author=maintainer)
    Checkpoint.objects.create(studio=studio, name="rnaseq_1", state="finalized", manifest_key="m")
    return {
        "url": live_server.url,
        "workspace": f"{workspace.organization.slug}/{workspace.slug}",
        "maintain": tokens.issue_token(maintainer, "cli")[1],
        "view": tokens.issue_token(viewer, "cli")[1],
        "config": tmp_path / "config",
    }


def run(world, *args, token="maintain"):
    env = {"XDG_CONFIG_HOME": str(world["config"]), "STUDIOS_WORKSPACE": world["workspace"]}
    if token:
        env |= {"STUDIOS_URL": world["url"], "STUDIOS_TOKEN": world[token]}
    else:
        env |= {"STUDIOS_URL": "", "STUDIOS_TOKEN": ""}
    return CliRunner().invoke(cli.main, list(args), env=env)


def test_login_checks_the_token_and_saves_it_for_me_alone(world):
    result = run(
        world, "-w", world["workspace"], "login", "--url", world["url"], "--token", world["maintain"], token=None
    )
    assert result.exit_code == 0, result.output
    assert world["workspace"] in result.output and "maintain" in result.output
    saved = world["config"] / "studios" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == {
        "url": world["url"],
        "token": world["maintain"],
        "workspace": world["workspace"],
    }
    listed = CliRunner().invoke(
        cli.main,
        ["list"],
        env={"XDG_CONFIG_HOME": str(world["config"]), "STUDIOS_URL": "", "STUDIOS_TOKEN": "", "STUDIOS_WORKSPACE": ""},
    )
    assert listed.exit_code == 0 and "rnaseq" in listed.output


def test_login_with_a_bad_token_says_why_and_saves_nothing(world):
    result = run(world, "login", "--url", world["url"], "--token", "stu_wrong", token=None)
    assert result.exit_code == 4
    assert "This access token is not valid." in result.output
    assert not (world["config"] / "studios" / "config.json").exists()


def test_without_a_login_the_command_says_how(world):
    result = run(world, "list", token=None)
    assert result.exit_code == 4 and "run studios login" in result.output


def test_list_is_a_table_for_people_and_json_for_scripts(world):
    table = run(world, "list")
    assert table.exit_code == 0
    header, row = table.output.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "TEMPLATE", "COMPUTE", "AUTHOR", "CREATED", "CONNECTED"]
    assert row.split()[1:6] == ["rnaseq", "stopped", "jupyterlab", "local", "mia"]
    page = json.loads(run(world, "--json", "list", "author:mia").output)
    assert page["total"] == 1 and page["studios"][0]["name"] == "rnaseq"
    assert json.loads(run(world, "--json", "list", "author:nobody").output)["total"] == 0


def test_add_view_rename_and_delete(world):
    added = run(world, "add", "qc", "--cpu", "1", "--memory", "1024", "--description", "quality control")
    assert added.exit_code == 0, added.output
    assert "qc" in added.output and "stopped" in added.output
    studio = json.loads(run(world, "--json", "view", "qc").output)
    assert (studio["cpus"], studio["memoryMb"], studio["description"]) == (1, 1024, "quality control")
    renamed = run(world, "rename-checkpoint", "rnaseq", "rnaseq_1", "before upgrade")
    assert renamed.exit_code == 0 and renamed.output == "Renamed to before_upgrade.\n"
    assert "before_upgrade" in run(world, "checkpoints", "rnaseq").output
    assert run(world, "delete", "qc", "--yes").output == "Deleted qc.\n"
    assert run(world, "view", "qc").exit_code == 3


def test_extend_keeps_a_running_studio_longer_and_view_says_until_when(world):
    studio = Studio.objects.get(name="rnaseq")
    assert run(world, "add", "long", "--lifespan", "48").exit_code == 0
    assert json.loads(run(world, "--json", "view", "long").output)["lifespanHours"] == 48
    stopped = run(world, "extend", "rnaseq", "--hours", "2")
    assert stopped.exit_code == 1
    assert "rnaseq is stopped; only a starting or running studio can be extended." in stopped.output
    make_running(studio)
    before = Studio.objects.get(pk=studio.pk).session.stops_at
    extended = run(world, "extend", "rnaseq", "--hours", "2")
    assert extended.exit_code == 0, extended.output
    assert "Stops at: " in extended.output and "(9 h 59 min left)" in extended.output
    assert Studio.objects.get(pk=studio.pk).session.stops_at == before + timedelta(hours=2)
    too_far = run(world, "extend", "rnaseq", "--hours", "119")
    assert too_far.exit_code == 1 and "can be extended by at most 110 more hours" in too_far.output
    viewer = run(world, "extend", "rnaseq", "--hours", "1", token="view")
    assert viewer.exit_code == 4 and "You need the maintain role or higher to extend studios" in viewer.output


def test_add_as_new_adds_a_stopped_clone_of_a_checkpoint_and_lists_by_name(world):
    added = run(world, "--json", "add-as-new", "rnaseq", "alpha-copy", "--checkpoint", "rnaseq_1", "--cpu", "1")
    assert added.exit_code == 0, added.output
    copy = json.loads(added.output)
    assert (copy["status"], copy["cpus"], copy["lastCheckpoint"]["name"]) == ("stopped", 1, "rnaseq_1")
    assert Studio.objects.get(name="alpha-copy").parent_checkpoint.copied_from.name == "rnaseq_1"
    rows = run(world, "list", "--order-by", "name").output.splitlines()[1:]
    assert [row.split()[1] for row in rows] == ["alpha-copy", "rnaseq"]
    unknown = run(world, "list", "--order-by", "size")
    assert unknown.exit_code == 1
    assert "Unknown ordering 'size'; order by newest, oldest, name, lastUsed." in unknown.output


def test_refusals_carry_the_pages_sentence_and_an_exit_code(world):
    too_big = run(world, "add", "qc", "--cpu", "64")
    assert too_big.exit_code == 1 and "cpus: local offers 1 to 8 CPUs." in too_big.output
    stopping_a_stopped = run(world, "stop", "rnaseq")
    assert stopping_a_stopped.exit_code == 1
    assert "rnaseq is stopped; only a starting or running studio can be stopped." in stopping_a_stopped.output
    viewer = run(world, "delete", "rnaseq", "--yes", token="view")
    assert viewer.exit_code == 4 and "You need the maintain role or higher to delete studios" in viewer.output
    assert run(world, "view", "nothing").exit_code == 3
    assert run(world, "url", "rnaseq").exit_code == 1
    assert run(world, "add", "qc", "-d", "nothing").exit_code == 3
    assert run(world, "wait", "rnaseq", "--for", "running", "--timeout", "1").exit_code == 6


def test_an_unreachable_platform_exits_5(world):
    result = CliRunner().invoke(
        cli.main,
        ["list"],
        env={"STUDIOS_URL": "http://127.0.0.1:9", "STUDIOS_TOKEN": "stu_x", "STUDIOS_WORKSPACE": "a/b"},
    )
    assert result.exit_code == 5 and "Cannot reach" in result.output


def test_templates_say_where_each_runs(world):
    result = run(world, "templates")
    assert result.exit_code == 0
    header, *rows = result.output.splitlines()
    assert header.split() == ["TEMPLATE", "COMPUTE", "AVAILABLE", "WHY", "NOT"]
    assert [row.split()[:2] for row in rows] == [["jupyterlab", "local"], ["rstudio", "local"], ["vscode", "local"]]
    assert rows[0].split()[2] == "yes"


def test_the_command_is_installed_as_studios_with_shell_completion():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"studios": "studios.cli:main"}
    result = CliRunner().invoke(cli.main, ["completion", "bash"])
    assert result.exit_code == 0 and "_STUDIOS_COMPLETE=bash_complete" in result.output


def test_the_cli_runs_a_studio_end_to_end_as_a_subprocess(live_platform, tmp_path):
    """Add, start with wait, open its URL through the proxy, rename its checkpoint, start a clone as new, stop and
    delete both: the command as a script runs it, with a real token against the real server."""
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    colleague = make_member(workspace, Role.CONNECT)
    env = {
        **os.environ,
        "STUDIOS_URL": live_platform.url,
        "STUDIOS_TOKEN": tokens.issue_token(maintainer, "cli")[1],
        "STUDIOS_WORKSPACE": f"{workspace.organization.slug}/{workspace.slug}",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }

    def studios(*args):
        done = subprocess.run(
            [sys.executable, "-m", "studios.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done

    studios("add", "pipeline", "--cpu", "1", "--memory", "1024")
    started = studios("start", "pipeline", "--wait")
    assert "running" in started.stdout and "[✓]" in started.stderr
    studio = Studio.objects.get(workspace=workspace, name="pipeline")
    assert studios("url", "pipeline").stdout.strip() == live_platform.session_origin(studio) + "/"
    assert Browser(live_platform, colleague).session(studio).http.get("/api/status").status_code == 200
    assert SessionClient(live_platform, studio).http.get("/api/status").status_code == 302  # no login: a ticket first

    studios("stop", "pipeline", "--wait")
    [checkpoint] = json.loads(studios("--json", "checkpoints", "pipeline").stdout)
    studios("rename-checkpoint", "pipeline", checkpoint["name"], "after qc")
    clone = json.loads(
        studios("--json", "start-as-new", "pipeline", "pipeline-clone", "--checkpoint", "after_qc", "--wait").stdout
    )
    assert clone["status"] == "running" and clone["parentCheckpoint"] is not None
    studios("stop", "pipeline-clone", "--wait")
    studios("delete", "pipeline", "--yes")
    studios("delete", "pipeline-clone", "--yes")
    assert json.loads(studios("--json", "list").stdout)["total"] == 0
