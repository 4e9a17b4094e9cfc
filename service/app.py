"""The app factory: the one place where the parts are wired together."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response
from opentelemetry.sdk.trace import TracerProvider

from service import (
    api,
    errors,
    health,
    logs,
    metrics,
    request_id,
    speedups,
    telemetry,
    wsgi_middleware,
)
from service.config import ServerSettings, Settings
from service.jsonio import OrjsonProvider
from service.metrics import StoreMetrics
from service.redis_clients import make_client
from service.store import MessageStore


def create_app(
    config: Settings | Mapping[str, Any] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Flask:
    """Build the app from settings, a mapping of setting names (the OTEL_* ones included), or
    the environment; traced by tracer_provider, if given (a gunicorn worker's: service/wsgi.py).

    The parts are added in the order below, each where its comment says why. What makes the
    order matter: Flask runs before_request hooks in the order they were added and
    after_request hooks in the reverse order, and WSGI middleware added later runs earlier."""
    env = config if isinstance(config, Mapping) else os.environ
    settings = config if isinstance(config, Settings) else Settings.from_env(env)
    app = _flask_app(settings)
    # Errors first: whatever part below fails, /readyz and unknown paths included, the
    # answer is JSON, whichever routes are registered.
    errors.init_app(app)
    # The start stamp, before the request metrics and the access line that read it (both
    # check at init_app).
    wsgi_middleware.init_app(app)
    # Metrics before the store, which records into them. Their after_request hook, added
    # first, runs last: it counts the status the client gets.
    store_metrics = metrics.init_app(
        app, settings.revision, ServerSettings.from_env(env).capacity, settings.instances_expected
    )
    # The store before the routes that use it (health.init_app checks).
    app.extensions["message_store"] = _message_store(settings, store_metrics, tracer_provider)
    # Tracing after the stamp and the metrics' middleware, so that their timings and counts
    # leave out its sampling decision and instrumentation, as for an untraced request; before
    # the request id, whose before_request hook tags the span that tracing's hook starts.
    telemetry.instrument_app(app, tracer_provider, env)
    request_id.init_app(app)
    # The access line (if asked for) anywhere after the stamp: it reads the request id and
    # trace context when it logs, after every before_request hook has run.
    logs.init_app(app, settings.access_log)
    # Routes last: everything they rely on is in place.
    health.init_app(app)
    api.init_app(app)
    return app


class _App(speedups.FlaskEnsureSyncOnce):
    """Flask, answering OPTIONS with 204 and its Allow header, and no body. Flask's own answer
    is a 200 with an empty text/html body, and the app answers nothing in HTML."""

    def make_default_options_response(self) -> Response:
        """As Flask's (the same Allow), without a body or a type of one."""
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def _flask_app(settings: Settings) -> Flask:
    app = _App(__name__)
    # "//" in a path is a 404 like any unknown path, not an HTML redirect.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # UTF-8 as is: JSON is UTF-8 by definition; escaping non-ASCII only makes it bigger.
    app.json = OrjsonProvider(app)
    app.extensions["settings"] = settings
    return app


def _message_store(
    settings: Settings, store_metrics: StoreMetrics, tracer_provider: TracerProvider | None
) -> MessageStore:
    """The store; its Redis commands are traced (for traced requests) only with a provider."""
    wait = (settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
    connect = functools.partial(make_client, settings)
    trace_client = telemetry.client_tracer(tracer_provider)
    return MessageStore(connect, store_metrics, wait, trace_client=trace_client)
