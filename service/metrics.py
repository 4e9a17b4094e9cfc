"""Prometheus metrics: request rate, errors and latency, Redis timings, business counters.

Under gunicorn, prometheus_client runs in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set
in gunicorn.conf.py): each worker writes its values to files there, and the master serves the
sum over all workers on the internal metrics port. The metric objects belong to one app (one
registry each), so every app made in tests counts on its own.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics

from service import __version__

# Request latency: from well under a millisecond (a cached GET) to the 10 s nginx waits at
# most. 0.025 s and 0.1 s are the latency SLO thresholds (see the alerting rules).
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
REDIS_ERROR_KINDS = ("timeout", "connection", "other")
UNMATCHED_ROUTE = "<unmatched>"


def path(request: Request) -> str:
    """The route template, never the raw path: bounded label values. (The function's name
    becomes the label name, `path`, as in prometheus-flask-exporter's default.)"""
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
                ["command"], buckets=REDIS_BUCKETS, registry=registry,
            ),
            redis_errors=Counter(
                "messages_redis_errors_total",
                "Redis commands that failed, by command and kind of failure",
                ["command", "kind"], registry=registry,
            ),
            stored=Counter(
                "messages_stored_total",
                "Messages accepted, by whether they were new or already stored",
                ["result"], registry=registry,
            ),
            lookups=Counter(
                "messages_lookups_total",
                "Message lookups by digest, by whether the message was found",
                ["result"], registry=registry,
            ),
        )  # fmt: skip
        _touch(metrics.redis_duration, [(c,) for c in REDIS_COMMANDS])
        _touch(metrics.redis_errors, [(c, k) for c in REDIS_COMMANDS for k in REDIS_ERROR_KINDS])
        _touch(metrics.stored, [("new",), ("existing",)])
        _touch(metrics.lookups, [("hit",), ("miss",)])
        return metrics


def _touch(metric: Any, label_sets: Iterable[tuple[str, ...]]) -> None:
    """Create each child now, so that its series exists (at 0) before the first event."""
    for labels in label_sets:
        metric.labels(*labels)


def _count_in_flight(app: Flask, gauge: Gauge) -> None:
    """Wrap the WSGI app so that every request, failed ones included, is counted."""
    inner: Callable = app.wsgi_app

    def wsgi_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        gauge.inc()
        try:
            return inner(environ, start_response)
        finally:
            gauge.dec()

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]


def init_app(app: Flask, revision: str) -> StoreMetrics:
    """Instrument the app's requests; return the store's metrics for it to record into."""
    registry = CollectorRegistry()
    PrometheusMetrics(
        app,
        path=None,  # served by the gunicorn master on its own port, never by the app
        registry=registry,
        group_by=path,
        buckets=REQUEST_BUCKETS,
        default_latency_as_histogram=True,
    )
    in_flight = Gauge(
        "flask_http_requests_in_flight",
        "Requests being served right now, over all live workers",
        registry=registry,
        multiprocess_mode="livesum",
    )
    _count_in_flight(app, in_flight)
    build_info = Gauge(
        "messages_build_info",
        "Always 1; labels say which build is running",
        ["version", "revision", "python"],
        registry=registry,
        multiprocess_mode="max",
    )
    build_info.labels(__version__, revision, platform.python_version()).set(1)
    app.extensions["metrics_registry"] = registry
    return StoreMetrics.create(registry)
