"""JSON logs: one object per line, carrying the request id and trace context of the request
being served. Every line goes through the standard library's logging (gunicorn's included),
formatted by python-json-logger.

The edge (nginx) writes the access line of every request, with the request id, the upstream
timings and, for a traced request, its trace id (from the app's `traceresponse` header: see
telemetry.py). The app logs what the edge cannot see: warnings and errors, with the request
and trace ids. Its own access line, a duplicate of the edge's, is off unless APP_ACCESS_LOG
asks for it (a deployment without nginx)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import Any

from flask import Flask, Response, g, has_request_context
from opentelemetry import trace

from service.metrics import route_template
from service.speedups import current_request
from service.wsgi_middleware import request_started, require_start_stamp

ACCESS_LOGGER = "service.access"


def request_context() -> dict[str, str]:
    """The request id and trace context of the request being served, those that exist."""
    fields: dict[str, str] = {}
    if has_request_context() and "request_id" in g:
        fields["request_id"] = g.request_id
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        fields["trace_id"] = format(context.trace_id, "032x")
        fields["span_id"] = format(context.span_id, "016x")
    return fields


class RequestContext(logging.Filter):
    """Adds request_id, trace_id and span_id to every record logged while serving a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drop it."""
        record.__dict__.update(request_context())
        return True


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """dictConfig for every logger of the process, gunicorn's included: JSON on stdout."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_context": {"()": RequestContext}},
        "formatters": {
            "json": {
                # orjson: the cheapest of its formatters per line (docs/performance.md).
                "()": "pythonjsonlogger.orjson.OrjsonFormatter",
                "fmt": "%(levelname)s %(name)s %(process)d %(message)s",
                "timestamp": "time",  # ISO 8601, UTC, microseconds
                "rename_fields": {
                    "levelname": "level",
                    "name": "logger",
                    "process": "pid",
                    "exc_info": "exception",
                },
            }
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["request_context"],
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
        },
        "root": {"level": level, "handlers": ["stdout"]},
    }


def _access_line(logger: logging.Logger) -> Callable[[Response], Response]:
    def log_access(response: Response) -> Response:
        req = current_request()
        # Digests and sizes only: message text never reaches a log line.
        fields = {
            "method": req.method,
            "route": route_template(req),
            "path": req.path,
            "status": response.status_code,
            "duration_ms": round((perf_counter() - request_started(req.environ)) * 1000, 3),
            "request_bytes": req.content_length or 0,
            "response_bytes": response.calculate_content_length() or 0,
        }
        logger.info("request", extra=fields)
        return response

    return log_access


def init_app(app: Flask, access_log: bool) -> None:
    """With access_log, write one access line per request (for deployments without nginx,
    whose JSON line per request already says what this one would)."""
    if access_log:
        require_start_stamp(app, "the access line")
        app.after_request(_access_line(logging.getLogger(ACCESS_LOGGER)))
