"""Flask's JSON responses through orjson: every answer of the API is JSON, so the encoder
is on every request's path (docs/performance.md). Request bodies are parsed in api.py,
strictly, by the standard library."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider

from service import speedups


def _dumps_line(obj: Any) -> bytes:
    """The JSON bytes with a final newline, as Flask's own responses end."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


class OrjsonProvider(JSONProvider):
    """UTF-8 output as is (no \\u escapes), keys in the order given."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialise to a str, as Flask's provider interface asks."""
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse (used by request.get_json, which the API does not call)."""
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """jsonify(): the bytes straight into the response."""
        return speedups.json_response(self, args, kwargs, _dumps_line)
