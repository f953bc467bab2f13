import os
import warnings

from celery import Celery
from celery.exceptions import SecurityWarning

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studios_project.settings")

app = Celery("studios")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The worker runs as root where local sessions run in containers (runc, mounts, cgroups need it). Celery warns
# against root because a worker that accepts pickle runs whatever code a message carries; this one accepts JSON only
# (CELERY_ACCEPT_CONTENT), so the warning says nothing true here. Celery refuses to start as root with pickle itself.
warnings.filterwarnings(
    "ignore", message="You're running the worker with superuser privileges", category=SecurityWarning
)
