"""Prometheus metrics for operators, served at /metrics when STUDIOS_METRICS_TOKEN is set (``views.metrics``).

Two sources, so that several processes (web, session proxy, worker; several of each in production) add up:

- What the database knows is read at scrape time: studios by status and template, the members connected to
  sessions (``SessionConnection``), how long starts and stops took (the activity log's running and stop events).
  Every process, and every instance, answers the same figures, and no process has to live to count them.
- What only a process sees is counted where it happens: the proxy's requests and their latency (session proxy), checkpoint
  durations and sizes (web, as sessions report them), Celery task failures (worker). With
  ``PROMETHEUS_MULTIPROC_DIR`` set (``runstudios`` sets it to DATA_DIR/metrics, emptied at each start), each process
  writes its counts there and a scrape adds them up (prometheus-client's multiprocess mode); without it a scrape
  answers for the process it reaches, which is enough for one process (tests, the development server).
"""

import os
from time import perf_counter

from django.db.models import Count, Q, Sum
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from .models import Event, SessionConnection, Studio, StudioStatus, Template

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

START_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1800)
STOP_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CHECKPOINT_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
CHECKPOINT_BYTES_BUCKETS = tuple(2**n for n in range(20, 41, 2))  # 1 MiB to 1 TiB

PROXY_REQUESTS = Counter(
    "studios_proxy_requests", "HTTP requests to session origins, by the status class of the answer.", ["status"]
)
PROXY_LATENCY = Histogram(
    "studios_proxy_response_seconds",
    "From a request's arrival at the proxy to the start of its answer.",
    buckets=LATENCY_BUCKETS,
)
CHECKPOINT_SECONDS = Histogram(
    "studios_checkpoint_seconds", "How long a session took to save a checkpoint.", buckets=CHECKPOINT_SECONDS_BUCKETS
)
CHECKPOINT_BYTES = Histogram(
    "studios_checkpoint_bytes", "What a saved checkpoint holds.", buckets=CHECKPOINT_BYTES_BUCKETS
)
TASK_FAILURES = Counter("studios_celery_task_failures", "Celery tasks that raised, by task.", ["task"])
# Each status class's counter, bound once: a ``labels()`` lookup per request would cost as much as the count.
REQUESTS_ANSWERED = {n: PROXY_REQUESTS.labels(f"{n}xx") for n in range(1, 6)}
REQUESTS_UNANSWERED = PROXY_REQUESTS.labels("none")


def proxy_counted(application):
    """Count the requests an ASGI application answers and time their first byte (a perf_counter and a
    counter per request: the proxy is a hot path)."""

    async def counted(scope, receive, send):
        began = perf_counter()
        status = 0

        async def timed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                PROXY_LATENCY.observe(perf_counter() - began)
            await send(message)

        try:
            await application(scope, receive, timed)
        finally:
            REQUESTS_ANSWERED.get(status // 100, REQUESTS_UNANSWERED).inc()

    return counted


def checkpoint_saved(seconds, size_bytes):
    if seconds is not None:
        CHECKPOINT_SECONDS.observe(seconds)
    CHECKPOINT_BYTES.observe(size_bytes)


def _histogram(name, documentation, bounds, kind):
    """A histogram of how long the events of ``kind`` took (``Event.seconds``), counted by the database."""
    events = Event.objects.filter(kind=kind, seconds__isnull=False)
    le = {f"le_{n}": Count("pk", filter=Q(seconds__lte=bound)) for n, bound in enumerate(bounds)}
    figures = events.aggregate(total=Count("pk"), sum=Sum("seconds"), **le)
    buckets = [(str(float(bound)), figures[f"le_{n}"]) for n, bound in enumerate(bounds)]
    return HistogramMetricFamily(
        name, documentation, buckets=[*buckets, ("+Inf", figures["total"])], sum_value=figures["sum"] or 0
    )


class DatabaseCollector:
    """What the database knows, read at each scrape."""

    def collect(self):
        studios = GaugeMetricFamily("studios_studios", "Studios by status and template.", labels=["status", "template"])
        counts = dict.fromkeys(
            ((status, template) for status in StudioStatus.values for template in Template.values), 0
        )
        for status, template, count in (
            Studio.objects.values_list("status", "template").annotate(Count("pk")).order_by()
        ):
            counts[status, template] = count
        for (status, template), count in counts.items():
            studios.add_metric([status, template], count)
        yield studios
        yield GaugeMetricFamily(
            "studios_connected_members",
            "Members connected to sessions (through the proxy's WebSockets), once per member and studio.",
            value=SessionConnection.objects.values("studio", "user").distinct().count(),
        )
        yield _histogram("studios_start_seconds", "From Start to a running session.", START_BUCKETS, Event.Kind.RUNNING)
        yield _histogram(
            "studios_stop_seconds", "From a stop's request to its session being gone.", STOP_BUCKETS, Event.Kind.STOPPED
        )


_database = CollectorRegistry()
_database.register(DatabaseCollector())


def exposition():
    """The metrics in Prometheus's text format."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
    else:
        processes = REGISTRY
    return generate_latest(processes) + generate_latest(_database)
