"""Prometheus metrics: request rate, errors and latency, Redis timings, business counters.

Under gunicorn, prometheus_client runs in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set
in gunicorn.conf.py): each worker writes its values to files there, and the master serves the
sum over all workers on the internal metrics port (prometheus-flask-exporter's multiprocess
server). The request metrics keep that exporter's names and labels but are recorded here, with
labelled children bound once (RequestMetrics). The metric objects belong to one app (one
registry each), so every app made in tests counts on its own.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from flask import Flask, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service import __version__, wsgi_middleware
from service.speedups import current_request
from service.wsgi_middleware import request_started

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# Request latency: from well under a millisecond (a cached GET) to the 10 s nginx waits at
# most. The edge's histograms (monitoring/mtail/edge.mtail) have the same boundaries, so
# that app and edge quantiles compare; 0.1 s, the latency SLO's threshold, is one of them
# (the SLO is measured at the edge: monitoring/prometheus/rules/recording.yml).
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Redis round trips on a LAN take 0.1-1 ms; the top buckets catch timeouts and retries.
REDIS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1,
    2.5,
)
REDIS_COMMANDS = ("GET", "SET", "PING")
# persistence: Redis refuses writes because it cannot write to its disk (MISCONF).
REDIS_ERROR_KINDS = ("timeout", "connection", "persistence", "other")
UNMATCHED_ROUTE = "<unmatched>"


def route_template(request: Request) -> str:
    """The request's route template, never its raw path: the value of the `path` label
    (prometheus-flask-exporter's name for it), bounded."""
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED_ROUTE


@dataclass(frozen=True)
class StoreMetrics:
    """Redis call durations and errors by command, and what the store did."""

    redis_duration: Histogram
    redis_errors: Counter
    stored: Counter
    lookups: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StoreMetrics:
        """Register the store's metrics; every label value starts at zero."""
        metrics = cls(
            redis_duration=Histogram(
                "messages_redis_command_duration_seconds",
                "Time of one Redis command as the app sees it, retries included",
                ["command"],
                buckets=REDIS_BUCKETS,
                registry=registry,
            ),
            redis_errors=Counter(
                "messages_redis_errors_total",
                "Redis commands that failed, by command and kind of failure",
                ["command", "kind"],
                registry=registry,
            ),
            stored=Counter(
                "messages_stored_total",
                "Messages accepted, by whether they were new or already stored",
                ["result"],
                registry=registry,
            ),
            lookups=Counter(
                "messages_lookups_total",
                "Message lookups by digest, by whether the message was found",
                ["result"],
                registry=registry,
            ),
        )
        _touch(metrics.redis_duration, [(c,) for c in REDIS_COMMANDS])
        _touch(metrics.redis_errors, [(c, k) for c in REDIS_COMMANDS for k in REDIS_ERROR_KINDS])
        _touch(metrics.stored, [("new",), ("existing",)])
        _touch(metrics.lookups, [("hit",), ("miss",)])
        return metrics


def _touch(metric: Any, label_sets: Iterable[tuple[str, ...]]) -> None:
    """Create each child now, so that its series exists (at 0) before the first event."""
    for labels in label_sets:
        metric.labels(*labels)


# Methods outside these are counted as "other": the method is the client's to choose, and a
# label value per invented method would be a series per invented method.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_RECORDED = "messages.recorded"  # WSGI environ key: counted already


def _method_label(method: str) -> str:
    return method if method in METHODS else "other"


class RequestMetrics:
    """Request count and latency under prometheus-flask-exporter's names and labels
    (`flask_http_request_duration_seconds`, `flask_http_request_total`,
    `flask_http_request_exceptions_total`), recorded with children bound once per
    (method, route, status). The exporter looks its children up by keyword on every request
    (its cost: docs/performance.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["method", "path", "status"]
        self.duration = Histogram(
            "flask_http_request_duration_seconds",
            "Flask HTTP request duration in seconds",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.total = Counter(
            "flask_http_request_total",
            "Total number of HTTP requests",
            ["method", "status"],
            registry=registry,
        )
        self.exceptions = Counter(
            "flask_http_request_exceptions_total",
            "Total number of HTTP requests which resulted in an exception",
            ["method", "status"],
            registry=registry,
        )
        self._bound: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        key = (_method_label(method), route, status)
        try:
            duration, total = self._bound[key]
        except KeyError:
            duration = self.duration.labels(key[0], route, str(status))
            total = self.total.labels(key[0], str(status))
            self._bound[key] = (duration, total)
        duration.observe(seconds)
        total.inc()

    def init_app(self, app: Flask, in_flight: Gauge) -> None:
        """Count the requests in flight, and record each when answered, timed from the
        stamp of its start (wsgi_middleware.init_app)."""
        wsgi_middleware.require_start_stamp(app, "the request metrics")
        inner = app.wsgi_app

        def wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            in_flight.inc()  # failed requests included
            try:
                return inner(environ, start_response)
            finally:
                in_flight.dec()

        def after_request(response: Response) -> Response:
            req = current_request()
            seconds = perf_counter() - request_started(req.environ)
            self.record(req.method, route_template(req), response.status_code, seconds)
            req.environ[_RECORDED] = True
            return response

        def teardown_request(exc: BaseException | None) -> None:
            # Only an exception that no error handler answered gets here (none should); the
            # client gets gunicorn's 500.
            if exc is None:
                return
            req = current_request()
            self.exceptions.labels(_method_label(req.method), "500").inc()
            if not req.environ.get(_RECORDED):
                seconds = perf_counter() - request_started(req.environ)
                self.record(req.method, route_template(req), 500, seconds)

        wsgi_middleware.install(app, wsgi_app)
        app.after_request(after_request)
        app.teardown_request(teardown_request)


def init_app(app: Flask, revision: str, capacity: int, instances_expected: int = 1) -> StoreMetrics:
    """Instrument the app's requests; return the store's metrics for it to record into.
    `capacity`: the requests this app instance serves at once (ServerSettings.capacity);
    `instances_expected`: the app instances the deployment runs (APP_INSTANCES)."""
    registry = CollectorRegistry()
    in_flight = Gauge(
        "flask_http_requests_in_flight",
        "Requests being served right now, over all live workers",
        registry=registry,
        multiprocess_mode="livesum",
    )
    RequestMetrics(registry).init_app(app, in_flight)
    build_info = Gauge(
        "messages_build_info",
        "Always 1; labels say which build is running",
        ["version", "revision", "python"],
        registry=registry,
        multiprocess_mode="max",
    )
    build_info.labels(__version__, revision, platform.python_version()).set(1)
    # What "busy" is measured against (AppWorkersSaturated): the slots this instance has.
    capacity_gauge = Gauge(
        "messages_worker_capacity",
        "Requests this app instance can serve at once (gunicorn workers x threads)",
        registry=registry,
        multiprocess_mode="max",
    )
    capacity_gauge.set(capacity)
    # Replicas come and go on new addresses (compose recreates them): the alert compares how
    # many are discovered with how many the deployment asks for, not addresses seen before.
    expected_gauge = Gauge(
        "messages_app_instances_expected",
        "App instances the deployment runs (APP_INSTANCES)",
        registry=registry,
        multiprocess_mode="max",
    )
    expected_gauge.set(instances_expected)
    app.extensions["metrics_registry"] = registry
    return StoreMetrics.create(registry)
