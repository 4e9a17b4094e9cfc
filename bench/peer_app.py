"""The instrumented peer: the reference app (bench/reference_app.py) with the signals a user
would add the way each library's docs show. Metrics: prometheus-flask-exporter's
GunicornPrometheusMetrics in multiprocess mode, by route (its gunicorn hooks are in
bench/reference.gunicorn.conf.py). Traces: none in this file; `opentelemetry-instrument`
(opentelemetry-distro) instruments Flask and Redis from the environment, at the SDK's default
sampler, exporting OTLP. Logs: one JSON access line per request through `logging`
(python-json-logger), with the trace id."""

import logging
import time

from flask import Response, g, request
from opentelemetry import trace
from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics
from pythonjsonlogger.json import JsonFormatter

# The reference's app and routes, unchanged: the peer differs only by its signals.
from bench.reference_app import app

# By route, not by path (the library's default): one series per digest would grow without
# bound, and make the peer slower than a user who read the docs to the end would have it.
metrics = GunicornPrometheusMetrics(app, group_by="url_rule")

access = logging.getLogger("access")
_handler = logging.StreamHandler()
_handler.setFormatter(JsonFormatter())
access.addHandler(_handler)
access.setLevel(logging.INFO)
access.propagate = False


@app.before_request
def start_timer() -> None:
    g.started = time.perf_counter()


@app.after_request
def log_request(response: Response) -> Response:
    context = trace.get_current_span().get_span_context()
    access.info(
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.started) * 1000, 3),
            "remote_addr": request.remote_addr,
            "trace_id": trace.format_trace_id(context.trace_id) if context.is_valid else None,
        },
    )
    return response
