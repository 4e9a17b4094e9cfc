"""The app's own WSGI middleware: how it is put in front of the app, and the stamp of when
the app began serving each request, which the request metrics and the access line both
read. The stamp is its own part, not the metrics', so that neither depends on the other."""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from flask import Flask

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

STARTED = "messages.started"  # WSGI environ key: perf_counter() when the request came in
_INSTALLED = "messages.start_stamp"  # app.extensions key: the stamp is in place


def install(app: Flask, wsgi_app: WSGIApplication) -> None:
    """Serve the app's requests through wsgi_app, which calls the one it replaces."""
    # Flask's documented way to add middleware. mypy refuses assigning to a method, and a
    # plain function in place of one that takes self.
    app.wsgi_app = wsgi_app  # type: ignore[method-assign,assignment]


def init_app(app: Flask) -> None:
    """Stamp every request with the time it reached this middleware (STARTED). Request
    timings start here: WSGI middleware installed later runs before it, and is not timed."""
    inner = app.wsgi_app

    def stamp_start(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ[STARTED] = perf_counter()
        return inner(environ, start_response)

    install(app, stamp_start)
    app.extensions[_INSTALLED] = True


def require_start_stamp(app: Flask, needed_by: str) -> None:
    """Fail now, not on every request, if init_app has not stamped the app's requests."""
    if not app.extensions.get(_INSTALLED):
        raise RuntimeError(f"{needed_by} needs wsgi_middleware.init_app(app) first")


def request_started(environ: WSGIEnvironment) -> float:
    """When the app began serving this request (perf_counter), for every request signal."""
    started: float = environ[STARTED]
    return started
