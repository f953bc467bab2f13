"""Create the data dir and what the embedded defaults keep in it, readable by the platform's user only.

Run once before the platform's first start (``make run`` does; so should a deployment's start script); running
it again changes nothing. Settings only read what this leaves: the generated secret key, the SQLite file (made
here, because SQLite would create it with the process's umask), the folders of the filesystem broker and of
static files.
"""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand


def missing():
    """What the platform needs from the data dir that is not there yet (nothing once prepared)."""
    return [
        what
        for what, absent in (
            ("a secret key", not os.environ.get("SECRET_KEY") and not settings.SECRET_KEY_FILE.exists()),
            ("the embedded database", settings.SQLITE_FILE is not None and not settings.SQLITE_FILE.exists()),
        )
        if absent
    ]


def create_private(path, content=b""):
    """Create ``path`` with mode 0600 from its first moment; an existing file is left as it is."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


class Command(BaseCommand):
    help = __doc__.splitlines()[0]
    requires_system_checks: list[str] = []  # the checks open the database this makes

    def handle(self, *args, **options):
        settings.DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.environ.get("SECRET_KEY"):
            create_private(settings.SECRET_KEY_FILE, secrets.token_urlsafe(50).encode())
        if settings.SQLITE_FILE is not None:
            create_private(settings.SQLITE_FILE)
        broker = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        folders = [broker[name] for name in ("data_folder_in", "data_folder_out", "control_folder") if name in broker]
        for folder in [settings.STATIC_ROOT, *map(Path, folders)]:
            folder.mkdir(parents=True, exist_ok=True)
        self.stdout.write(f"The data dir {settings.DATA_DIR} is ready.")
