"""Run the whole product in one command: migrations, demo data, a Celery worker with beat, and the web server.

The worker and the web server are processes of their own, as in production; their metrics add up through
prometheus-client's multiprocess mode (``studios.metrics``), which each must choose before it imports the library:
so this command gives both PROMETHEUS_MULTIPROC_DIR, emptied, before it starts them.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

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
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(settings.DATA_DIR / "metrics")
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir)
        environment = dict(
            os.environ,
            STUDIOS_PLATFORM_URL=os.environ.get("STUDIOS_PLATFORM_URL", f"http://127.0.0.1:{port}"),
            PROMETHEUS_MULTIPROC_DIR=metrics_dir,
        )
        worker_environment = environment
        if settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer":
            # The worker's channel layer is its own: it hands what the pages' sockets must hear to the web process.
            relay = environment["STUDIOS_PLATFORM_URL"].rstrip("/") + reverse("pages_relay")
            worker_environment = dict(environment, STUDIOS_PAGES_RELAY=relay)
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
            env=worker_environment,
        )
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "studios_project.asgi:application",
                f"--host={host}",
                f"--port={port}",
                "--log-level=info",
            ],
            env=environment,
        )
        # Session origins send browsers to the platform at the session domain (localhost), where its login cookie is.
        address = settings.STUDIOS_PUBLIC_URL or f"http://{settings.STUDIOS_SESSION_DOMAIN}:{port}"
        self.stdout.write(f"Studios is running at {address}/ (log in with a user and password above)")
        # SIGTERM ends this command as Ctrl-C does: by taking both processes down.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        try:
            while worker.poll() is None and web.poll() is None:
                time.sleep(0.5)
            raise CommandError(
                f"The {'web server' if web.poll() is not None else 'worker'} stopped; its output says why."
            )
        except KeyboardInterrupt:
            pass
        finally:
            for process in (web, worker):
                process.terminate()
            for process in (web, worker):
                process.wait(timeout=30)
