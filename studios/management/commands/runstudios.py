"""Run the whole product in one command: migrations, demo data, a Celery worker with beat, the web server, and the
session proxy on a port of its own (session origins: ``http://s<id>.localhost:8001``).

The worker, the web server and the session proxy are processes of their own, as in production; their metrics add up through
prometheus-client's multiprocess mode (``studios.metrics``), which each must choose before it imports the library:
so this command gives them PROMETHEUS_MULTIPROC_DIR, emptied, before it starts them.
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

from ...splice import UVICORN_WS
from .prepare import missing


class Command(BaseCommand):
    help = __doc__
    requires_system_checks: list[str] = []  # run once the data dir is known to be prepared

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--session-port",
            type=int,
            default=int(settings.STUDIOS_SESSION_PORT or 8001),
            help="where the session proxy serves session origins (default: STUDIOS_SESSION_PORT, else 8001)",
        )
        parser.add_argument("--no-demo", action="store_true", help="do not create the demo workspace and users")

    def handle(self, *args, host, port, session_port, no_demo, **options):
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
        address = settings.STUDIOS_PUBLIC_URL or f"http://{settings.STUDIOS_SESSION_DOMAIN}:{port}"
        if not settings.STUDIOS_PUBLIC_URL:
            # Browsers reach both ports directly: session origins send them to the platform at the session domain
            # (localhost), where its login cookie is. Behind a reverse proxy, STUDIOS_PUBLIC_URL says where instead.
            environment.update(STUDIOS_PUBLIC_URL=address, STUDIOS_SESSION_PORT=str(session_port))
        others_environment = environment
        if settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer":
            # The channel layers of the worker and the session proxy are their own: they hand what the pages' sockets
            # must hear to the web process. (The session proxy then asks again for its sockets' accesses on a timer.)
            relay = environment["STUDIOS_PLATFORM_URL"].rstrip("/") + reverse("pages_relay")
            others_environment = dict(environment, STUDIOS_PAGES_RELAY=relay)
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
            env=others_environment,
        )
        web = self.serve("studios_project.asgi:application", host, port, environment, "--log-level=info")
        proxy = self.serve(
            "studios_project.session_asgi:application", host, session_port, others_environment, f"--ws={UVICORN_WS}"
        )
        self.stdout.write(f"Studios is running at {address}/ (log in with a user and password above)")
        # SIGTERM ends this command as Ctrl-C does: by taking its processes down.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        try:
            processes = {"web server": web, "session proxy": proxy, "worker": worker}
            while all(process.poll() is None for process in processes.values()):
                time.sleep(0.5)
            stopped = next(name for name, process in processes.items() if process.poll() is not None)
            raise CommandError(f"The {stopped} stopped; its output says why.")
        except KeyboardInterrupt:
            pass
        finally:
            for process in (web, proxy, worker):
                process.terminate()
            for process in (web, proxy, worker):
                process.wait(timeout=30)

    def serve(self, application, host, port, environment, *options):
        """uvicorn serving ``application`` (uvloop and httptools: requirements.txt installs them)."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                application,
                f"--host={host}",
                f"--port={port}",
                "--lifespan=off",
                *options,
            ],
            env=environment,
        )
