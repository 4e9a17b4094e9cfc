"""Health checks: /healthz says the process serves, /readyz that it can reach the store."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: touches nothing, so a Redis outage never gets workers restarted."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the store answers a PING (StoreUnavailable becomes the JSON 503 of the
    app-wide error handlers, service/errors.py)."""
    current_app.extensions["message_store"].ping()
    return jsonify(status="ready")


def init_app(app: Flask) -> None:
    """Register the health endpoints (the app's store in place first)."""
    if "message_store" not in app.extensions:
        raise RuntimeError("health.init_app needs app.extensions['message_store'] first")
    app.register_blueprint(bp)
