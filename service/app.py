"""The app factory: the one place where the parts are wired together."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from service import api, health, logs, metrics, request_id, telemetry
from service.config import Settings
from service.jsonio import OrjsonProvider
from service.store import MessageStore, make_client


class ServiceFlask(Flask):
    """Flask, deciding once per function, not on every call, whether a hook or view needs
    the async adapter: Flask runs inspect.iscoroutinefunction on each of the request's
    nine hooks and its view, about 3% of a request's CPU (docs/performance.md)."""

    @functools.cached_property
    def _ensured(self) -> dict[Callable, Callable]:
        return {}

    def ensure_sync(self, func: Callable) -> Callable:
        """As Flask's, remembered per function."""
        try:
            return self._ensured[func]
        except KeyError:
            return self._ensured.setdefault(func, super().ensure_sync(func))
        except TypeError:  # not hashable: nothing to remember it by
            return super().ensure_sync(func)


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the app from settings, a mapping of setting names, or the environment."""
    settings = config if isinstance(config, Settings) else Settings.from_env(config)
    app = ServiceFlask(__name__)
    # "//" in a path is a 404 like any unknown path, not an HTML redirect.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # UTF-8 as is: JSON is UTF-8 by definition; escaping non-ASCII only makes it bigger.
    app.json = OrjsonProvider(app)
    app.extensions["settings"] = settings
    store_metrics = metrics.init_app(app, settings.revision)
    wait = (settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
    connect = functools.partial(make_client, settings)
    store = MessageStore(connect, store_metrics, wait, trace_client=telemetry.client_tracer())
    app.extensions["message_store"] = store
    telemetry.instrument_app(app)  # first: its span must exist when the request id is set
    request_id.init_app(app)
    logs.init_app(app, settings.access_log)
    health.init_app(app)
    api.init_app(app)
    return app
