"""JSON logs: one object per line, carrying the request id and trace context of the request
being served, and one access line per request."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from gunicorn.glogging import Logger as GunicornLogger
from opentelemetry import trace

from service.metrics import path as route_of

ACCESS_LOGGER = "service.access"


class RequestContext(logging.Filter):
    """Adds request_id, trace_id and span_id to every record logged while serving a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drop it."""
        if has_request_context() and "request_id" in g:
            record.request_id = g.request_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """dictConfig for every logger of the process, gunicorn's included: JSON on stdout."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_context": {"()": RequestContext}},
        "formatters": {
            "json": {
                # orjson: the access line is written for every request (docs/performance.md).
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


def lighten_records() -> None:
    """Skip what every log record would otherwise gather and no line of ours prints: the
    caller's file and line (a stack walk), thread and multiprocessing names. (The logging
    HOWTO's "Optimization" section names these switches.)"""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


class NoAccessLogger(GunicornLogger):
    """Gunicorn's logger without gunicorn's access log: nginx and the app each write one line
    per request, and gunicorn builds its own line's fields for every request whenever a
    logging config is set, even with no access log to write them to."""

    def access(self, resp, req, environ, request_time) -> None:
        """Nothing: see the class."""


def _start_timer() -> None:
    g.started = perf_counter()


def _log_access(response: Response) -> Response:
    # Digests and sizes only: message text never reaches a log line.
    logging.getLogger(ACCESS_LOGGER).info(
        "request",
        extra={
            "method": request.method,
            "route": route_of(request),
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((perf_counter() - g.get("started", perf_counter())) * 1000, 3),
            "request_bytes": request.content_length or 0,
            "response_bytes": response.calculate_content_length() or 0,
        },
    )
    return response


def init_app(app: Flask) -> None:
    """Write one access line per request."""
    app.before_request(_start_timer)
    app.after_request(_log_access)
