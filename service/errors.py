"""Every error the app answers, the framework's own included, as JSON: {"err_msg": ...}.

App-wide, not the API's: /readyz, an unknown path and a wrong method answer through these
too. create_app registers them before any route. What gunicorn refuses itself, before the app
sees it, is JSON too: service/server_errors.py."""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from service.store import StoreFull, StoreNotSaving, StoreUnavailable


class ApiError(Exception):
    """An error answered as {"err_msg": ...} with the given status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> Response:
    """{"err_msg": message} with the given status."""
    response = jsonify(err_msg=message)
    response.status_code = status
    return response


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message)


def _http_error(exc: HTTPException) -> Response:
    if isinstance(exc, RequestEntityTooLarge):
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return error_response(413, f"Request body is larger than {limit} bytes")
    # Werkzeug's default descriptions are HTML-oriented prose; its short names read better.
    message = exc.description
    if message is None or message == type(exc).description:
        message = exc.name
    response = error_response(exc.code or 500, message)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _store_unavailable(exc: StoreUnavailable) -> Response:
    current_app.logger.warning("store unavailable: %s", exc)
    response = error_response(503, "Store unavailable, try again later")
    response.headers["Retry-After"] = "1"
    return response


def _store_full(exc: StoreFull) -> Response:
    current_app.logger.error("store full: %s", exc)
    return error_response(507, "Store is full, message not stored")


def _store_not_saving(exc: StoreNotSaving) -> Response:
    current_app.logger.error("store cannot save: %s", exc)
    response = error_response(503, "Store cannot save messages right now, try again later")
    # Redis writes again by itself once its disk has room: worth a retry, though not at once.
    response.headers["Retry-After"] = "10"
    return response


def _unexpected(exc: Exception) -> Response:
    current_app.logger.exception("unhandled error")
    return error_response(500, "Internal server error")


def init_app(app: Flask) -> None:
    """Answer every error as JSON."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(StoreUnavailable, _store_unavailable)
    app.register_error_handler(StoreFull, _store_full)
    app.register_error_handler(StoreNotSaving, _store_not_saving)
    app.register_error_handler(Exception, _unexpected)
