"""Log lines: JSON objects, the request context on every line, and the app's access line
(off by default: the edge writes one per request)."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from service import logs
from service.app import create_app


@pytest.fixture
def json_logging() -> Iterator[io.StringIO]:
    """The process's logging as gunicorn.conf.py sets it up, for this test only; what the
    standard library's loggers write."""
    loggers = [logging.getLogger(), logging.getLogger("gunicorn.error")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    logging.config.dictConfig(logs.logging_config())
    written = io.StringIO()
    logging.getLogger().handlers[0].setStream(written)  # type: ignore[attr-defined]
    yield written
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_with_app_access_log_each_request_writes_one_line_with_the_fields_of_every_line(
    redis_url, json_logging
):
    app = create_app({"REDIS_URL": redis_url, "APP_ACCESS_LOG": "true"})
    client = app.test_client()
    headers = {"X-Request-ID": "req-1"}
    posted = client.post("/messages", json={"message": "secret text"}, headers=headers)
    client.get(f"/messages/{'0' * 64}", headers={"X-Request-ID": "req-2"})
    with app.test_request_context(headers={"X-Request-ID": "req-3"}):
        app.preprocess_request()
        logging.getLogger("tests.logs").warning("a line from the standard library")

    out = json_logging.getvalue()
    assert "secret text" not in out  # message text never reaches a log line
    written = lines(out)
    access = [x for x in written if x["logger"] == "service.access"]
    assert [(x["request_id"], x["method"], x["route"], x["status"]) for x in access] == [
        ("req-1", "POST", "/messages", 201),
        ("req-2", "GET", "/messages/<digest>", 404),
    ]
    line = access[0]
    assert line["level"] == "INFO" and line["message"] == "request"
    assert line["path"] == "/messages"
    assert line["request_bytes"] == posted.request.content_length
    assert line["response_bytes"] == len(posted.data)
    assert 0 < line["duration_ms"] < 10_000
    (other,) = [x for x in written if x["logger"] == "tests.logs"]
    assert other["request_id"] == "req-3"
    common = {"time", "level", "logger", "pid", "message", "request_id"}
    assert common <= line.keys() and common <= other.keys()
    assert line["pid"] == other["pid"]
    assert line["time"].endswith("+00:00") and other["time"].endswith("+00:00")  # one format


def test_by_default_requests_write_no_line_the_edge_writes_them(redis_url, json_logging):
    app = create_app({"REDIS_URL": redis_url})
    client = app.test_client()
    assert client.post("/messages", json={"message": "quiet"}).status_code == 201
    assert client.get(f"/messages/{'0' * 64}").status_code == 404
    assert json_logging.getvalue() == ""


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_app_access_log_takes_a_yes_or_no(value):
    with pytest.raises(ValueError, match="APP_ACCESS_LOG"):
        create_app({"APP_ACCESS_LOG": value})
