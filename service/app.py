"""The app factory: the one place where the parts are wired together."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from flask import Flask

from service import api, health, logs, metrics, request_id, telemetry
from service.config import Settings
from service.jsonio import OrjsonProvider
from service.store import MessageStore, make_client


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the app from settings, a mapping of setting names, or the environment."""
    settings = config if isinstance(config, Settings) else Settings.from_env(config)
    app = Flask(__name__)
    # "//" in a path is a 404 like any unknown path, not an HTML redirect.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # UTF-8 as is: JSON is UTF-8 by definition; escaping non-ASCII only makes it bigger.
    app.json = OrjsonProvider(app)
    app.extensions["settings"] = settings
    store_metrics = metrics.init_app(app, settings.revision)
    wait = (settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
    store = MessageStore(functools.partial(make_client, settings), store_metrics, wait)
    app.extensions["message_store"] = store
    telemetry.instrument_app(app)  # first: its span must exist when the request id is set
    request_id.init_app(app)
    logs.init_app(app)
    health.init_app(app)
    api.init_app(app)
    return app
