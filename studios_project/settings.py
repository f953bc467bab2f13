"""Studios settings: one module, configured by environment variables with safe defaults.

With nothing set, the product runs on embedded parts (SQLite, a filesystem Celery broker,
the in-memory channel layer) so that one command brings it up on a laptop. Importing this module only reads:
``manage.py prepare`` creates the data dir and what the embedded parts keep in it (``studios.datadir``).
"""

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
# The SQLite database, the generated secret key, broker files and session folders; root's alone (0700).
DATA_DIR = Path(os.environ.get("STUDIOS_DATA_DIR", BASE_DIR / "var")).resolve()
SECRET_KEY_FILE = DATA_DIR / "secret_key"


def _secret_key():
    """SECRET_KEY from the environment, else the one ``manage.py prepare`` generated into the data dir."""
    try:
        return os.environ.get("SECRET_KEY") or SECRET_KEY_FILE.read_text().strip()
    except FileNotFoundError:
        return ""  # the system check "studios.E001" says to run ``manage.py prepare``


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("DEBUG", "") == "1"
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "studios",
    "checkpoints",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "studios_project.csp.ContentSecurityPolicyMiddleware",
    # Last, as its documentation asks: it answers a locked-out login before the view runs.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "studios_project.urls"
ASGI_APPLICATION = "studios_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'studios.sqlite3'}"),
        # 0: each request closes its connection. Under ASGI Django runs each request's code in a thread of its own,
        # where a connection kept for later is never used again, only left open until the garbage collector finds
        # it (the web process held 50 after two minutes of a polled list, and PostgreSQL ran out of connections).
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", 0)),
        conn_health_checks=True,
    )
}
SQLITE_FILE = None
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Opened read-write, never created: ``manage.py prepare`` makes the file, readable by the platform only (a
    # process that created it would use its umask: every session token readable by the host's users).
    SQLITE_FILE = Path(DATABASES["default"]["NAME"])
    DATABASES["default"]["NAME"] = f"{SQLITE_FILE.as_uri()}?mode=rw"
    # Web, worker and beat share one file: wait for a lock instead of failing at once.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
AUTHENTICATION_BACKENDS = [
    # Counts failed logins and refuses a locked-out username at this address (django-axes); then the usual check.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# After this many failed logins for one username from one address, it is locked out for the cool-off time (or until
# an administrator deletes its access attempts in the admin, when the cool-off is 0).
AXES_FAILURE_LIMIT = int(os.environ.get("STUDIOS_LOGIN_FAILURE_LIMIT", 5))
_lockout_minutes = int(os.environ.get("STUDIOS_LOGIN_LOCKOUT_MINUTES", 15))
AXES_COOLOFF_TIME = timedelta(minutes=_lockout_minutes) if _lockout_minutes else None
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False

# A platform login lasts this long (and a session origin's cookie with it); CSRF tokens live in a cookie readable
# only by the platform's own origin (host-only), checked together with the Origin header of every POST.
SESSION_COOKIE_AGE = int(os.environ.get("SESSION_COOKIE_AGE", 14 * 24 * 3600))
# Behind TLS (a reverse proxy that terminates https and says so in X-Forwarded-Proto, which uvicorn believes from
# the addresses in FORWARDED_ALLOW_IPS): Secure cookies, a redirect from http, and HSTS.
STUDIOS_HTTPS = os.environ.get("STUDIOS_HTTPS", "") == "1"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = STUDIOS_HTTPS
SECURE_SSL_REDIRECT = STUDIOS_HTTPS and os.environ.get("SECURE_SSL_REDIRECT", "1") == "1"
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if STUDIOS_HTTPS else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = os.environ.get("SECURE_HSTS_INCLUDE_SUBDOMAINS", "") == "1"

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
WHITENOISE_USE_FINDERS = True

REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # The layer blocks on Redis for 5 s at a time; redis-py's default read timeout is also
            # 5 s, which would break every idle consumer. Give reads more room.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    # A task whose worker was killed goes back to the queue after this long (the reconcile re-queues the starts
    # and stops no task works on well before that).
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {"visibility_timeout": 600}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "filesystem://"
    # Kombu's filesystem transport with messages that appear only once complete (see broker.py).
    CELERY_BROKER_TRANSPORT = "studios_project.broker:Transport"
    _broker_dir = DATA_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # The worker looks for new tasks this often (kombu's default, 1 s, made every start and stop wait half a
        # second on average); a look lists one folder.
        "polling_interval": 0.1,
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "control_folder": str(_broker_dir / "control"),
    }

CELERY_TASK_DEFAULT_QUEUE = os.environ.get("STUDIOS_TASK_QUEUE", "studios")
# JSON only, never pickle: a message on the broker is data, not code (which is what lets the worker run as root,
# as local sessions' containers need; see celery.py).
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# With the broker down, a request that queues a task gives up after about a second (its change stands: the
# reconcile queues the task once the broker is back) rather than hanging.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
# Local sessions run in containers (runc or crun) when the host allows it ("auto"), or as plain
# processes ("off"). Each start gets a fresh writable layer of this size.
STUDIOS_LOCAL_ISOLATION = os.environ.get("STUDIOS_LOCAL_ISOLATION", "auto")
STUDIOS_WRITABLE_LAYER_MB = int(os.environ.get("STUDIOS_WRITABLE_LAYER_MB", 5120))
# A container's root filesystem is the host's "/" below its writable layer; STUDIOS_TEMPLATE_ROOTFS, a JSON
# object, gives some templates a folder of their own instead (an exported images/<template> image), e.g.
# {"rstudio": "/srv/rootfs/rstudio"}.
STUDIOS_TEMPLATE_ROOTFS = json.loads(os.environ.get("STUDIOS_TEMPLATE_ROOTFS", "{}"))

# How often running sessions save a checkpoint.
STUDIOS_CHECKPOINT_INTERVAL_SECONDS = int(os.environ.get("STUDIOS_CHECKPOINT_INTERVAL_SECONDS", 5 * 60))
# Stored checkpoint content younger than this is never removed, so that a save in progress is safe.
STUDIOS_CHECKPOINT_GC_GRACE_SECONDS = int(os.environ.get("STUDIOS_CHECKPOINT_GC_GRACE_SECONDS", 60 * 60))

CELERY_BEAT_SCHEDULE = {
    "reconcile-sessions": {"task": "studios.tasks.reconcile_sessions", "schedule": 20.0},
    "checkpoint-sessions": {
        "task": "studios.tasks.checkpoint_running_sessions",
        "schedule": float(STUDIOS_CHECKPOINT_INTERVAL_SECONDS),
    },
    "clean-checkpoint-stores": {"task": "checkpoints.tasks.clean_all_stores", "schedule": 60.0 * 60},
    "check-compute-environments": {"task": "studios.tasks.check_compute_environments", "schedule": 5 * 60.0},
    "stop-due-studios": {"task": "studios.tasks.stop_due_studios", "schedule": 60.0},
}

# The address sessions use to report readiness and progress back to the platform.
STUDIOS_PLATFORM_URL = os.environ.get("STUDIOS_PLATFORM_URL", "http://127.0.0.1:8000")
# A studio still starting after this long is errored by the reconcile task.
STUDIOS_START_TIMEOUT_SECONDS = int(os.environ.get("STUDIOS_START_TIMEOUT_SECONDS", 30 * 60))
# How long a stop waits for a session to save its final checkpoint and exit before it is killed.
STUDIOS_STOP_TIMEOUT_SECONDS = int(os.environ.get("STUDIOS_STOP_TIMEOUT_SECONDS", 5 * 60))
# A studio stopping for longer than this offers a force stop.
STUDIOS_FORCE_STOP_AFTER_SECONDS = int(os.environ.get("STUDIOS_FORCE_STOP_AFTER_SECONDS", 10 * 60))
# Members on a studio's pages are warned this long before it is stopped automatically (its lifespan runs out).
STUDIOS_STOP_WARNING_MINUTES = int(os.environ.get("STUDIOS_STOP_WARNING_MINUTES", 15))
# How often the supervisor of a studio with an idle stop looks whether its IDE works.
STUDIOS_WORK_CHECK_SECONDS = int(os.environ.get("STUDIOS_WORK_CHECK_SECONDS", 60))

# The Fernet key that encrypts compute environments' cloud credentials in the database. Without it,
# a key derived from SECRET_KEY is used: then changing SECRET_KEY makes stored credentials unreadable.
STUDIOS_SECRETS_KEY = os.environ.get("STUDIOS_SECRETS_KEY", "")

# The registry `make images` pushes the template images to (images/build.sh starts Debian's docker-registry there,
# on loopback, when nothing answers).
STUDIOS_REGISTRY = os.environ.get("STUDIOS_REGISTRY", "127.0.0.1:5055")
# The image each template runs by default, built from images/<template>/Dockerfile and tagged with the versions
# images/tags.json names; a compute environment may name others. STUDIOS_TEMPLATE_IMAGES, a JSON object,
# replaces some or all of them, e.g. with ECR repositories.
STUDIOS_TEMPLATE_IMAGES = {
    **{
        template: f"{STUDIOS_REGISTRY}/studios/{template}:{tag}"
        for template, tag in json.loads((BASE_DIR / "images/tags.json").read_text()).items()
    },
    **json.loads(os.environ.get("STUDIOS_TEMPLATE_IMAGES", "{}")),
}
# Where local compute environments unpack the images they pull, once per digest (sessions share them read-only).
STUDIOS_IMAGE_CACHE_DIR = Path(os.environ.get("STUDIOS_IMAGE_CACHE_DIR", DATA_DIR / "images"))

# Each studio's session is served on an origin of its own, <prefix><id>.<domain>: s12.localhost by default
# (browsers resolve *.localhost to the loopback address); in production a wildcard DNS name with a wildcard
# certificate, ideally under a registrable domain other than the platform's (sessions.example-usercontent.com).
STUDIOS_SESSION_DOMAIN = os.environ.get("STUDIOS_SESSION_DOMAIN", "localhost").strip(".").lower()
STUDIOS_SESSION_PREFIX = os.environ.get("STUDIOS_SESSION_PREFIX", "s").lower()
# The platform's address as browsers reach it (https://studios.example.com), where session origins send browsers
# for a ticket. Empty: the session domain itself, with the session origin's scheme and port (localhost:8000).
STUDIOS_PUBLIC_URL = os.environ.get("STUDIOS_PUBLIC_URL", "").rstrip("/")
# The port of session origins as browsers reach them, when it is not the platform's: the session proxy's own port
# (runstudios serves it on 8001, and sets this and STUDIOS_PUBLIC_URL for its processes). Empty: the platform's
# (one reverse proxy in front of both, sending the session domain to the proxy's processes).
STUDIOS_SESSION_PORT = os.environ.get("STUDIOS_SESSION_PORT", "")

# A studio's last activity is written at most this often by each session proxy process (a hot path).
STUDIOS_ACTIVITY_WRITE_SECONDS = int(os.environ.get("STUDIOS_ACTIVITY_WRITE_SECONDS", 60))
# Prometheus metrics (/metrics) answer a scraper that sends this as a bearer token; unset, /metrics is not found.
STUDIOS_METRICS_TOKEN = os.environ.get("STUDIOS_METRICS_TOKEN", "")
# How often each web process vouches for the session connections it holds; three missed beats make them ghosts.
STUDIOS_HEARTBEAT_SECONDS = int(os.environ.get("STUDIOS_HEARTBEAT_SECONDS", 10))
# Where a process whose channel layer does not reach the web process's (the in-memory one) hands the messages for
# the pages' sockets instead (``presence.relay``): ``runstudios`` sets it for its Celery worker without Redis.
STUDIOS_PAGES_RELAY = os.environ.get("STUDIOS_PAGES_RELAY", "")

# The JSON API under /api/v1/ (studios/api/): personal access tokens for scripts, the login session for the
# browsable API; its errors carry a stable code and the sentence the pages show.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "studios.api.authentication.AccessTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser", "rest_framework.parsers.FormParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "studios.api.errors.handle_exception",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Studios API",
    "DESCRIPTION": "Workspaces, studios, checkpoints, templates, compute environments and datasets. Authenticate "
    "with a personal access token: `Authorization: Bearer stu_…`.",
    "VERSION": "1",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the drf-spectacular-sidecar package's static files, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}


def answered_with_an_error(record):
    """The web server's access log keeps the requests answered with an error (4xx, 5xx) and drops the rest: pages
    poll every second and the proxy serves every file of a session, which would bury the errors."""
    return not isinstance(record.args, tuple) or len(record.args) != 5 or int(record.args[4]) >= 400


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"errors_only": {"()": lambda: answered_with_an_error}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "uvicorn.access": {"handlers": ["console"], "filters": ["errors_only"], "propagate": False},
        "studios": {"handlers": ["console"], "level": os.environ.get("STUDIOS_LOG_LEVEL", "INFO")},
        # Every 5xx with its traceback (Django's own handlers print it only with DEBUG, or mail it to ADMINS).
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
