"""Attack 5, the platform's side: its own secrets on the host are root's alone.

The embedded database holds every session's token and every user's password hash; the generated secret key
signs every login. Neither may be readable by the host's other users, from the moment they are created. No
container needed: this runs wherever the platform does.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def manage(data_dir, *command):
    # The embedded defaults: no database, broker or key from the environment.
    environment = {
        name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")
    }
    environment["STUDIOS_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_embedded_database_and_the_generated_secret_key_are_readable_by_root_only(tmp_path):
    data_dir = tmp_path / "fresh-data-dir"
    assert manage(data_dir, "prepare").returncode == 0
    assert manage(data_dir, "migrate", "--noinput").returncode == 0
    modes = {path.name: f"{stat.S_IMODE(path.stat().st_mode):o}" for path in sorted(data_dir.glob("studios.sqlite3*"))}
    modes["secret_key"] = f"{stat.S_IMODE((data_dir / 'secret_key').stat().st_mode):o}"
    modes["data dir"] = f"{stat.S_IMODE(data_dir.stat().st_mode):o}"
    assert "studios.sqlite3" in modes, f"no database was created in {data_dir}"
    assert modes == {**dict.fromkeys(modes, "600"), "data dir": "700"}, f"the platform's secrets are open: {modes}"


def test_nothing_but_prepare_creates_the_database_or_the_key(tmp_path):
    """Importing the settings only reads: a command run before ``prepare`` (with the umask's modes) makes no file."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    started = manage(data_dir, "runstudios", "--port", "1")
    assert started.returncode != 0
    assert "run `python manage.py prepare` first" in started.stderr
    migrated = manage(data_dir, "migrate", "--noinput")
    assert migrated.returncode != 0
    assert list(data_dir.iterdir()) == []
