"""The session supervisor's contract with the platform, and what the images ship of it."""

import subprocess
import sys

import pytest

from studios.supervisor import protocol
from studios.supervisor.protocol import BadReport, Mount, SessionConfig

from .images import image_code


def test_a_configuration_survives_the_trip_through_the_environment():
    config = SessionConfig(
        template="vscode",
        base_path="/studios/3/connect/",
        token="t0ken",
        platform_url="http://127.0.0.1:8000",
        work_dir="s3://lab/work",
        manifest_prefix="studio-3",
        session_dir="/var/studios/sessions/studio-3",
        port=41000,
        control_port=41001,
        cpus=4,
        memory_mb=2048,
        layer_mb=64,
        mounts=(Mount("reads", "s3://cohort/reads/", False), Mount("scratch", "/data/scratch", True)),
        restore={
            "name": "s_1",
            "manifest_key": "manifests/studio-3/" + "0" * 32 + ".json.zst",
            "manifest_sha256": "f" * 64,
        },
        hidden=("/var/studios",),
    )
    environ = config.to_environ()
    assert all(name.startswith("STUDIOS_") and isinstance(value, str) for name, value in environ.items())
    assert SessionConfig.from_environ({**environ, "PATH": "/usr/bin"}) == config


@pytest.mark.parametrize(
    "kind, body, refused",
    [
        ("ready", {"endpoint": "http://127.0.0.1:22", "steps": []}, "cannot say endpoint"),
        (
            "ready",
            {"steps": [{"name": "Provisioning compute", "state": "succeeded", "message": "", "x": 1}]},
            "exactly",
        ),
        ("progress", {"steps": [{"name": "Format the disk", "state": "succeeded", "message": ""}]}, "unknown step"),
        ("progress", {"steps": [{"name": "Mounting data", "state": "succeeded", "message": "x" * 5000}]}, "at most"),
        ("failed", {"reason": "x", "agent_endpoint": "http://10.0.0.1"}, "cannot say agent_endpoint"),
        (
            "checkpoint",
            {"manifest_key": "manifests/studio-4/" + "0" * 32 + ".json.zst", "manifest_sha256": "0" * 64},
            "this studio's",
        ),
        ("checkpoint", {"manifest_key": "manifests/studio-3/../../x", "manifest_sha256": "0" * 64}, "this studio's"),
        (
            "checkpoint",
            {
                "manifest_key": "manifests/studio-3/" + "0" * 32 + ".json.zst",
                "manifest_sha256": "0" * 64,
                "size_bytes": -1,
            },
            "whole numbers",
        ),
        ("working", {"idle_since": "2020-01-01", "last_activity": "2020-01-01"}, "cannot say idle_since"),
        (
            "checkpoint",
            {
                "manifest_key": "manifests/studio-3/" + "0" * 32 + ".json.zst",
                "manifest_sha256": "0" * 64,
                "seconds": "1",
            },
            "how long the checkpoint took",
        ),
        ("pages-saved", {"saved": 1, "unsaved": True}, "whole numbers"),
        ("pages-saved", {"saved": -1, "unsaved": 0}, "whole numbers"),
        ("pages-saved", {"saved": 1, "documents": ["analysis.ipynb"]}, "cannot say documents"),
        ("shell", {}, "unknown report"),
        ("ready", [], "JSON object"),
    ],
)
def test_a_report_says_only_what_a_supervisor_may_say(kind, body, refused):
    with pytest.raises(BadReport, match=refused):
        protocol.parse_report(kind, body, "studio-3")


def test_a_well_formed_checkpoint_report_passes():
    key = "manifests/studio-3/" + "a" * 32 + ".json.zst"
    body = {"manifest_key": key, "manifest_sha256": "b" * 64, "size_bytes": 10, "final": True, "layer_used_bytes": 5}
    assert protocol.parse_report("checkpoint", body, "studio-3") == {
        "manifest_key": key,
        "manifest_sha256": "b" * 64,
        "final": True,
        "size_bytes": 10,
        "layer_used_bytes": 5,
        "layer_total_bytes": 0,
        "seconds": None,  # a supervisor from before reports said how long a checkpoint took
    }
    assert protocol.parse_report("checkpoint", {**body, "seconds": 2.5}, "studio-3")["seconds"] == 2.5


@pytest.mark.parametrize("template", ["jupyterlab", "vscode", "rstudio"])
def test_the_supervisor_an_image_ships_runs_without_django(tmp_path, template):
    """Copy exactly what the template's Dockerfile copies, and import the supervisor from there alone."""
    image_code(template, tmp_path)
    probe = (
        "import sys\n"
        "import studios.supervisor.supervisor, studios.supervisor.gate, studios.supervisor.sandbox\n"
        "assert studios.supervisor.__file__.startswith(sys.argv[1]), studios.supervisor.__file__\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'django'))\n"
    )
    # -I: the project's folder is not on the path; only the copy is.
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, sys.argv[1]); exec({probe!r})", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
