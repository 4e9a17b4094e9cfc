"""The reference: the simplest Flask + Redis implementation of the same API, with no
metrics, traces or logs. The benchmark measures the service against it."""

import hashlib
import os

import redis
from flask import Flask, jsonify, request

app = Flask(__name__)
# Gunicorn imports this module in each worker (no preload), so each has its own pool.
store = redis.Redis.from_url(os.environ["REFERENCE_REDIS_URL"])


@app.post("/messages")
def post_message():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return jsonify(err_msg='Body must be a JSON object like {"message": "..."}'), 400
    data = body["message"].encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    store.set(f"msg:{digest}", data, nx=True)
    return jsonify(digest=digest), 201


@app.get("/messages/<digest>")
def get_message(digest):
    data = store.get(f"msg:{digest.lower()}")
    if data is None:
        return jsonify(err_msg="Message not found"), 404
    return jsonify(message=data.decode("utf-8"))
