"""How create_app wires the parts: each part works without the ones it does not need, and
one added before what it needs fails at once, saying what is missing."""

from __future__ import annotations

import functools
import logging
from unittest import mock

import pytest
from flask import Flask, request
from prometheus_client import CollectorRegistry

from native.ports import free_port
from service import errors, health, logs, metrics, wsgi_middleware
from service.app import create_app
from service.config import Settings, unset_empty_gunicorn_settings
from service.metrics import StoreMetrics
from service.redis_clients import make_client
from service.store import MessageStore


def unreachable_store() -> MessageStore:
    url = f"redis://127.0.0.1:{free_port()}/0"
    connect = functools.partial(make_client, Settings(redis_url=url, redis_retries=0))
    return MessageStore(connect, StoreMetrics.create(CollectorRegistry()))


def test_readyz_answers_json_with_the_error_handlers_alone_not_the_api():
    app = Flask(__name__)
    app.extensions["message_store"] = unreachable_store()
    errors.init_app(app)
    health.init_app(app)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json == {"err_msg": "Store unavailable, try again later"}
    assert app.test_client().get("/nowhere").json == {"err_msg": "Not Found"}


def test_health_needs_the_store_first():
    with pytest.raises(RuntimeError, match="message_store"):
        health.init_app(Flask(__name__))


def test_request_metrics_and_the_access_line_need_the_start_stamp_first():
    with pytest.raises(RuntimeError, match=r"request metrics needs wsgi_middleware\.init_app"):
        metrics.init_app(Flask(__name__), "rev", capacity=1)
    with pytest.raises(RuntimeError, match=r"access line needs wsgi_middleware\.init_app"):
        logs.init_app(Flask(__name__), access_log=True)
    logs.init_app(Flask(__name__), access_log=False)  # no line, nothing needed


def test_the_access_line_is_timed_without_the_request_metrics(redis_url, caplog):
    with mock.patch("service.metrics.RequestMetrics.init_app", mock.Mock()):
        app = create_app({"REDIS_URL": redis_url, "APP_ACCESS_LOG": "true"})
    with caplog.at_level(logging.INFO, logs.ACCESS_LOGGER):
        assert app.test_client().get("/healthz").status_code == 200
    (record,) = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]
    assert 0 <= record.duration_ms < 10_000


def test_the_start_stamp_is_in_the_environ_of_every_request():
    app = Flask(__name__)
    wsgi_middleware.init_app(app)
    seen = []
    app.before_request(lambda: seen.append(wsgi_middleware.request_started(request.environ)))
    app.test_client().get("/")
    assert len(seen) == 1 and seen[0] > 0


def test_the_worker_capacity_comes_from_the_settings_create_app_is_given(redis_url):
    env = {"REDIS_URL": redis_url, "WEB_CONCURRENCY": "3", "GUNICORN_WORKER_CLASS": "gthread"}
    app = create_app({**env, "GUNICORN_THREADS": "4"})
    registry = app.extensions["metrics_registry"]
    assert registry.get_sample_value("messages_worker_capacity") == 12


@pytest.mark.parametrize(
    ("given", "left"),
    [
        ({"WEB_CONCURRENCY": ""}, {}),
        ({"WEB_CONCURRENCY": " "}, {}),
        ({"WEB_CONCURRENCY": "2"}, {"WEB_CONCURRENCY": "2"}),
        ({}, {}),
    ],
)
def test_empty_settings_that_gunicorn_reads_itself_are_unset_before_it_starts(given, left):
    unset_empty_gunicorn_settings(given)
    assert given == left
