"""Speedups that rely on libraries' internals, kept in one place.

Each was measured (docs/performance.md, under History: "What the profile showed, and what
changed" has the figures) and each names the library release whose internals it relies
on. tests/test_speedups.py checks every one of those assumptions against the installed
library and fails naming the library and its version: after upgrading Flask, Werkzeug,
prometheus_client, redis-py or an OpenTelemetry instrumentation, run it first.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Flask, Request, Response
from flask import request as request_proxy
from flask.json.provider import JSONProvider
from gunicorn.glogging import Logger as GunicornLogger
from prometheus_client import values
from werkzeug.local import LocalProxy

from service import wsgi_middleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Decision = TypeVar("Decision")  # a sampling decision, as trace_sampled_requests_only keeps it


class FlaskEnsureSyncOnce(Flask):
    """Flask deciding once per function, not on every call, whether a hook or view needs the
    async adapter: Flask runs inspect.iscoroutinefunction on each of a request's nine hooks
    and its view, on every request.

    Relies on Flask 3.1: Flask.ensure_sync(func) is called for every hook and view, and its
    answer depends on func alone."""

    @functools.cached_property
    def _ensured(self) -> dict[Callable[..., Any], Callable[..., Any]]:
        return {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """As Flask's, remembered per function."""
        try:
            return self._ensured[func]
        except KeyError:
            return self._ensured.setdefault(func, super().ensure_sync(func))
        except TypeError:  # not hashable: nothing to remember it by
            return super().ensure_sync(func)


def current_request() -> Request:
    """The request being served, unwrapped from Flask's `request` proxy once: every attribute
    read through the proxy looks the request up again. For hooks that run on every
    request and read several attributes.

    Relies on Werkzeug 3.1: flask.request is a werkzeug.local.LocalProxy, and
    LocalProxy._get_current_object() returns the object behind it."""
    return cast("LocalProxy[Request]", request_proxy)._get_current_object()


def json_response(
    provider: JSONProvider,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dumps: Callable[[Any], bytes],
) -> Response:
    """jsonify()'s answer with a body of bytes: JSONProvider.response() would take the body
    from dumps() as a str, so orjson's bytes would be decoded and encoded again.

    Relies on Flask 3.1: JSONProvider keeps its app as `_app`, and
    `_prepare_response_obj(args, kwargs)` makes jsonify()'s arguments into one object."""
    obj = provider._prepare_response_obj(args, kwargs)
    app = cast(Flask, provider._app)  # a weak proxy to the Flask app
    return app.response_class(dumps(obj), mimetype="application/json")


def cache_pid_for_multiprocess_values() -> None:
    """In multiprocess mode, prometheus_client asks the kernel for the process id on every
    metric update, to notice a fork: several system calls per request. The id is cached
    instead, and refreshed in a forked child, which is the same rule. Call it before any
    metric value exists in the process (as gunicorn.conf.py does): values made before it keep
    their own files.

    Relies on prometheus_client 0.26: metrics make their values from values.ValueClass when
    they are made; in multiprocess mode that class has `_multiprocess` true; and
    values.MultiProcessValue(process_identifier=...) makes such a class (documented, though
    "at your own risk")."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return
    pid = [os.getpid()]
    os.register_at_fork(after_in_child=lambda: pid.__setitem__(0, os.getpid()))
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid[0])


def lighten_records() -> None:
    """Skip what every log record would otherwise gather and no line of ours prints: the
    caller's file and line (a stack walk), thread and multiprocessing names.

    Relies on CPython 3.11+'s logging: the switches the logging HOWTO names in its
    "Optimization" section, logging._srcfile (None: no caller lookup), logThreads and
    logMultiprocessing."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


# gunicorn ships no type information, so its Logger is Any to mypy.
class NoAccessLogger(GunicornLogger):  # type: ignore[misc]
    """Gunicorn's logger without gunicorn's access log: nginx writes one line per request
    (and the app, if asked). Gunicorn builds its own line's fields for every request
    whenever a logging config is set, even with no access log to write them to.

    Relies on gunicorn 27: its workers call Logger.access(resp, req, environ, request_time)
    once per request, and nothing else builds the access line's fields."""

    def access(self, resp: object, req: object, environ: object, request_time: object) -> None:
        """Nothing: see the class."""


# What opentelemetry-instrumentation-flask 0.66b1's instrument_app() leaves on an app: the
# app's WSGI callable from before, and one request hook made by each of these functions
# (found by the start of the hook's __qualname__).
ORIGINAL_WSGI_APP = "_original_wsgi_app"
FLASK_INSTRUMENTOR_HOOKS = {
    "before_request_funcs": "_wrapped_before_request.",
    "teardown_request_funcs": "_wrapped_teardown_request.",
}


def trace_sampled_requests_only(
    app: Flask,
    sampled: Callable[[WSGIEnvironment], Decision],
    traced: contextvars.ContextVar[Decision],
) -> None:
    """Route each request either through FlaskInstrumentor's instrumentation or, when
    `sampled` says no (a false value: False, None), around it; while a traced request is
    served, `traced` holds what `sampled` said (the tracer provider reads the decision from
    it: service/telemetry.py). Call right after FlaskInstrumentor().instrument_app(app).

    The instrumentation builds a request's attributes, extracts its context and starts a
    (non-recording) span for every request before the sampler has its say, the largest
    share of the requests it then drops.

    Relies on opentelemetry-instrumentation-flask 0.66b1: instrument_app() keeps the app's
    WSGI callable from before as app._original_wsgi_app, and adds one before_request and
    one teardown_request hook, whose __qualname__s start as in FLASK_INSTRUMENTOR_HOOKS."""
    traced_app = app.wsgi_app
    plain_app = _uninstrumented_wsgi_app(app)
    for hooks_attribute, qualname_prefix in FLASK_INSTRUMENTOR_HOOKS.items():
        hooks = getattr(app, hooks_attribute)
        _run_only_when_traced(hooks, qualname_prefix, traced)

    def wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        decision = sampled(environ)
        if decision:
            token = traced.set(decision)
            try:
                return traced_app(environ, start_response)
            finally:
                traced.reset(token)
        return plain_app(environ, start_response)

    wsgi_middleware.install(app, wsgi_app)


def _uninstrumented_wsgi_app(app: Flask) -> WSGIApplication:
    try:
        plain_app: WSGIApplication = vars(app)[ORIGINAL_WSGI_APP]
    except KeyError:
        raise RuntimeError(
            f"FlaskInstrumentor left no app.{ORIGINAL_WSGI_APP}: see service/speedups.py"
        ) from None
    return plain_app


def _run_only_when_traced(
    hooks: dict[str | None, list[Callable[..., Any]]],
    qualname_prefix: str,
    traced: contextvars.ContextVar[Any],
) -> None:
    app_hooks = hooks.get(None, [])
    found = [i for i, f in enumerate(app_hooks) if f.__qualname__.startswith(qualname_prefix)]
    if len(found) != 1:
        raise RuntimeError(
            f"expected one {qualname_prefix!r} hook from FlaskInstrumentor, found {len(found)}:"
            " see service/speedups.py"
        )
    hook = app_hooks[found[0]]

    @functools.wraps(hook)
    def only_when_traced(*args: object) -> object:
        return hook(*args) if traced.get() else None

    app_hooks[found[0]] = only_when_traced
