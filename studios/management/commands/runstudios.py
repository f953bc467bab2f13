"""Run the whole product in one command: migrations, demo data, a Celery worker with beat, and the web server."""

import os
import signal
import subprocess
import sys

import uvicorn
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from .prepare import missing


class Command(BaseCommand):
    help = __doc__
    requires_system_checks: list[str] = []  # run once the data dir is known to be prepared

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-demo", action="store_true", help="do not create the demo workspace and users")

    def handle(self, *args, host, port, no_demo, **options):
        if absent := missing():
            raise CommandError(
                f"The data dir has no {' and no '.join(absent)} yet: run `python manage.py prepare` first "
                "(`make run` does)."
            )
        self.check()
        call_command("migrate", interactive=False, verbosity=0)
        if not no_demo:
            call_command("seed_demo")
        environment = dict(
            os.environ, STUDIOS_PLATFORM_URL=os.environ.get("STUDIOS_PLATFORM_URL", f"http://127.0.0.1:{port}")
        )
        os.environ.update(environment)
        if settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer":
            # The worker's channel layer is its own: it hands what the pages' sockets must hear to this process.
            relay = environment["STUDIOS_PLATFORM_URL"].rstrip("/") + reverse("pages_relay")
            environment = dict(environment, STUDIOS_PAGES_RELAY=relay)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "studios_project",
                "worker",
                "--beat",
                "--pool=threads",
                "--concurrency=8",
                "--loglevel=INFO",
                f"--schedule={settings.DATA_DIR / 'celerybeat-schedule'}",
            ],
            env=environment,
        )
        # Session origins send browsers to the platform at the session domain (localhost), where its login cookie is.
        address = settings.STUDIOS_PUBLIC_URL or f"http://{settings.STUDIOS_SESSION_DOMAIN}:{port}"
        self.stdout.write(f"Studios is running at {address}/ (log in with a user and password above)")
        # uvicorn re-raises the signal that stopped it; with Python's default SIGTERM action that
        # would end this process before the worker is stopped.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        try:
            uvicorn.run("studios_project.asgi:application", host=host, port=port, log_level="info")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
