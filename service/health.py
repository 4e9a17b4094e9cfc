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
    """Readiness: the store answers a PING (StoreUnavailable becomes a 503)."""
    current_app.extensions["message_store"].ping()
    return jsonify(status="ready")


def init_app(app: Flask) -> None:
    """Register the health endpoints."""
    app.register_blueprint(bp)
