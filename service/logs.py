"""JSON logs: one object per line, carrying the request id and trace context of the request
being served, and one access line per request.

Every line but the access line goes through the standard library's logging (gunicorn's
included), formatted by python-json-logger. The access line, written for every request, goes
through structlog straight to stdout as bytes, with the same fields: the standard library's
records, filters and formatter cost three times as much per line (docs/performance.md)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter
from typing import Any, BinaryIO

import orjson
import structlog
from flask import Flask, Response, g, has_request_context, request
from gunicorn.glogging import Logger as GunicornLogger
from opentelemetry import trace

from service.metrics import path as route_of
from service.metrics import request_started

ACCESS_LOGGER = "service.access"


def request_context() -> dict[str, str]:
    """The request id and trace context of the request being served, those that exist."""
    fields = {}
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


def _add_request_context(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event.update(request_context())
    return event


def _add_time(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    # As python-json-logger writes it for every other line (structlog's own ends in "Z").
    event["time"] = datetime.now(UTC).isoformat()
    return event


def access_logger(stream: BinaryIO) -> Any:
    """A structlog logger writing access lines as JSON to the given stream, with the fields
    of every other line. Made in each worker, after the fork (create_app), for its pid."""
    return structlog.wrap_logger(
        structlog.BytesLogger(stream),
        cache_logger_on_first_use=True,
        processors=[
            _add_request_context,
            structlog.processors.EventRenamer("message"),
            _add_time,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    ).bind(level="INFO", logger=ACCESS_LOGGER, pid=os.getpid())


def _access_line(logger: Any) -> Callable[[Response], Response]:
    def log_access(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        # Digests and sizes only: message text never reaches a log line.
        logger.info(
            "request",
            method=req.method,
            route=route_of(req),
            path=req.path,
            status=response.status_code,
            duration_ms=round((perf_counter() - request_started(req.environ)) * 1000, 3),
            request_bytes=req.content_length or 0,
            response_bytes=response.calculate_content_length() or 0,
        )
        return response

    return log_access


def init_app(app: Flask) -> None:
    """Write one access line per request."""
    app.after_request(_access_line(access_logger(sys.stdout.buffer)))
