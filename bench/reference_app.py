"""The reference: the simplest Flask + Redis implementation of the same API, with no
metrics, traces or logs. The benchmark measures the service against it."""

import hashlib
import os
from typing import cast

import redis
from flask import Flask, Response, jsonify, request

app = Flask(__name__)
# Gunicorn imports this module in each worker (no preload), so each has its own pool.
store = redis.Redis.from_url(os.environ["REFERENCE_REDIS_URL"])


@app.post("/messages")
def post_message() -> tuple[Response, int]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return jsonify(err_msg='Body must be a JSON object like {"message": "..."}'), 400
    data = body["message"].encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    store.set(f"msg:{digest}", data, nx=True)
    return jsonify(digest=digest), 201


@app.get("/messages/<digest>")
def get_message(digest: str) -> Response | tuple[Response, int]:
    # bytes, not str: the client does not decode responses.
    data = cast("bytes | None", store.get(f"msg:{digest.lower()}"))
    if data is None:
        return jsonify(err_msg="Message not found"), 404
    return jsonify(message=data.decode("utf-8"))
