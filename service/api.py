"""The /messages API."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from service.errors import ApiError, error_response
from service.store import MessageStore

bp = Blueprint("messages", __name__)

_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
# A digest names its content forever: a message may be kept as long as anyone likes. The
# edge's cache (nginx.conf.template) stores it, and sends the same Cache-Control from there.
IMMUTABLE = "public, max-age=31536000, immutable"
_IF_NONE_MATCH = "HTTP_IF_NONE_MATCH"  # WSGI environ key


def _store() -> MessageStore:
    store: MessageStore = current_app.extensions["message_store"]
    return store


@cache
def _openapi() -> bytes:
    return (Path(__file__).parent / "openapi.json").read_bytes()


@bp.get("/openapi.json")
def openapi() -> Response:
    """The API's OpenAPI 3 document."""
    return Response(_openapi(), mimetype="application/json")


@bp.post("/messages")
def post_message() -> tuple[Response, int]:
    """Store a message and answer its digest."""
    data = _read_message(current_app.extensions["settings"].max_message_bytes)
    digest, _created = _store().put(data)
    response = jsonify(digest=digest)
    response.headers["Location"] = f"/messages/{digest}"
    return response, 201


@bp.get("/messages/<digest>")
def get_message(digest: str) -> Response:
    """Answer the message stored under a digest (either case)."""
    if not _DIGEST.fullmatch(digest):
        raise ApiError(400, "Digest must be 64 hexadecimal characters (SHA-256)")
    key = digest.lower()
    data = _store().get(key)
    if data is None:  # answered here, not raised: a miss is common, not exceptional
        return error_response(404, "Message not found")
    # If-None-Match compares weakly (RFC 9110, 13.1.2): W/"<digest>" and * match too.
    if _IF_NONE_MATCH in request.environ and request.if_none_match.contains_weak(key):
        response = current_app.response_class(status=304)
        del response.headers["Content-Type"]  # no content to describe
    else:
        response = jsonify(message=data.decode("utf-8"))
    response.headers.add("ETag", f'"{key}"')  # strong: the bytes follow from the digest
    response.headers.add("Cache-Control", IMMUTABLE)
    return response


def _read_message(max_message_bytes: int) -> bytes:
    """The UTF-8 bytes of the request's message, or an ApiError saying what is wrong."""
    if request.mimetype != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiError(415, "JSON must be encoded as UTF-8")
    body = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    doc = _parse_json(body)
    if not isinstance(doc, dict):
        raise ApiError(400, 'Body must be a JSON object like {"message": "..."}')
    if "message" not in doc:
        raise ApiError(400, "Field 'message' is missing")
    if len(doc) > 1:
        raise ApiError(400, "Only the field 'message' is allowed")
    message = doc["message"]
    if not isinstance(message, str):
        raise ApiError(400, "Field 'message' must be a string")
    try:
        data = message.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "Field 'message' contains an unpaired surrogate") from None
    if len(data) > max_message_bytes:
        raise ApiError(413, f"Message is larger than {max_message_bytes} bytes")
    return data


def _parse_json(body: bytes) -> object:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "Body is not valid UTF-8") from None
    try:
        return json.loads(
            text, object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant
        )
    except RecursionError:
        raise ApiError(400, "Body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, over-long integers, our own checks
        raise ApiError(400, f"Body is not valid JSON: {exc}") from None


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in object")
    return obj


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def init_app(app: Flask) -> None:
    """Register the API. Its errors are answered by the app-wide handlers (service/errors.py)."""
    app.register_blueprint(bp)
