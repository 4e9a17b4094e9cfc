"""X-Request-ID: taken from the caller (nginx sets it) when well-formed, else generated."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request
from opentelemetry import trace

HEADER = "X-Request-ID"
_ENVIRON_KEY = "HTTP_X_REQUEST_ID"  # read straight from the environ: on every request
# Bounded and log-safe: a client cannot inject newlines or megabytes into our logs.
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The server span's attribute, in the service's own namespace: semantic conventions name no
# request id of this kind (aws.request_id and the like are other services' ids), and
# http.response.header.x-request-id would be an array of strings, not the plain id a tag
# search is given.
SPAN_ATTRIBUTE = "messages.request_id"


def _assign() -> None:
    given = request.environ.get(_ENVIRON_KEY, "")
    g.request_id = given if _VALID.fullmatch(given) else uuid.uuid4().hex
    # Lets a trace be found by the id the client saw (a no-op when tracing is off).
    trace.get_current_span().set_attribute(SPAN_ATTRIBUTE, g.request_id)


def _echo(response: Response) -> Response:
    response.headers[HEADER] = g.get("request_id") or uuid.uuid4().hex
    return response


def init_app(app: Flask) -> None:
    """Give every request an id and return it on every response."""
    app.before_request(_assign)
    app.after_request(_echo)
