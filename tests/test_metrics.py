"""Metrics in the app itself: labels, business counters, Redis timings and errors."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from native.ports import free_port
from service import __version__
from service.app import create_app
from tests.helpers import run_in_multiprocess_mode
from tests.metrics_text import samples, value

DIGEST_ROUTE = "/messages/<digest>"


def scrape(app) -> str:
    return generate_latest(app.extensions["metrics_registry"]).decode()


def test_requests_are_labelled_by_route_template_not_path(app, client):
    for digest in ("a" * 64, "b" * 64, "c" * 64):
        client.get(f"/messages/{digest}")
    client.get("/no/such/path")
    text = scrape(app)
    count = "flask_http_request_duration_seconds_count"
    assert value(text, count, method="GET", path=DIGEST_ROUTE, status="404") == 3
    assert value(text, count, path="<unmatched>", status="404") == 1
    paths = {labels["path"] for labels, _ in samples(text, count)}
    assert paths == {DIGEST_ROUTE, "<unmatched>"}
    assert value(text, "flask_http_request_total", method="GET", status="404") == 4


def test_business_counters(app, client):
    client.post("/messages", json={"message": "one"})
    client.post("/messages", json={"message": "one"})
    client.post("/messages", json={"message": "two"})
    digest = client.post("/messages", json={"message": "two"}).get_json()["digest"]
    client.get(f"/messages/{digest}")
    client.get(f"/messages/{'0' * 64}")
    text = scrape(app)
    assert value(text, "messages_stored_total", result="new") == 2
    assert value(text, "messages_stored_total", result="existing") == 2
    assert value(text, "messages_lookups_total", result="hit") == 1
    assert value(text, "messages_lookups_total", result="miss") == 1


def test_redis_commands_are_timed(app, client):
    client.post("/messages", json={"message": "x"})
    client.get(f"/messages/{'0' * 64}")
    client.get("/readyz")
    text = scrape(app)
    name = "messages_redis_command_duration_seconds_count"
    assert [value(text, name, command=c) for c in ("SET", "GET", "PING")] == [1, 1, 1]
    assert value(text, "messages_redis_command_duration_seconds_sum") > 0


def test_series_exist_before_the_first_event(app):
    text = scrape(app)
    assert ({"result": "new"}, 0.0) in samples(text, "messages_stored_total")
    assert ({"command": "GET", "kind": "timeout"}, 0.0) in samples(
        text, "messages_redis_errors_total"
    )


def test_connection_errors_are_counted_by_kind():
    app = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_RETRIES": "0"})
    app.test_client().post("/messages", json={"message": "x"})
    text = scrape(app)
    assert value(text, "messages_redis_errors_total", command="SET", kind="connection") == 1
    assert value(text, "messages_redis_errors_total", kind="timeout") == 0


def test_timeouts_are_counted_by_kind(silent_server):
    app = create_app(
        {
            "REDIS_URL": f"redis://127.0.0.1:{silent_server}/0",
            "REDIS_TIMEOUT": "0.1",
            "REDIS_RETRIES": "0",
        }
    )
    assert app.test_client().get(f"/messages/{'0' * 64}").status_code == 503
    text = scrape(app)
    assert value(text, "messages_redis_errors_total", command="GET", kind="timeout") == 1


def test_full_store_is_an_other_error(app, client, redis_url):
    import redis

    r = redis.Redis.from_url(redis_url)
    r.config_set("maxmemory", 1)
    try:
        assert client.post("/messages", json={"message": "x"}).status_code == 507
    finally:
        r.config_set("maxmemory", 0)
    assert value(scrape(app), "messages_redis_errors_total", command="SET", kind="other") == 1


def test_in_flight_is_back_to_zero_and_build_info_is_set(app, client):
    client.get("/healthz")
    client.post("/messages", data=b"not json", content_type="application/json")
    text = scrape(app)
    assert value(text, "flask_http_requests_in_flight") == 0
    ((labels, one),) = samples(text, "messages_build_info")
    assert one == 1 and labels["version"] == __version__


def test_the_instances_the_deployment_runs_are_reported(redis_url):
    app = create_app({"REDIS_URL": redis_url, "APP_INSTANCES": "3"})
    assert value(scrape(app), "messages_app_instances_expected") == 3


@pytest.mark.parametrize("bad", ["0", "two"])
def test_a_bad_instance_count_is_refused_with_its_name(redis_url, bad):
    with pytest.raises(ValueError, match="APP_INSTANCES"):
        create_app({"REDIS_URL": redis_url, "APP_INSTANCES": bad})


@pytest.mark.parametrize("path", ["/metrics", "/messages/metrics"])
def test_the_app_does_not_serve_metrics(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404)
    assert b"flask_http" not in r.data


def test_methods_a_client_invents_share_one_label_value(app, client):
    for method in ("FOO", "BAR", "BAZ"):
        assert client.open("/messages", method=method).status_code == 405
    text = scrape(app)
    assert value(text, "flask_http_request_total", method="other", status="405") == 3
    methods = {labels["method"] for labels, _ in samples(text, "flask_http_request_total")}
    assert methods == {"other"}


def test_an_exception_past_every_handler_is_counted_once(app):
    def fail(response):
        raise RuntimeError("a broken after_request hook")

    app.after_request(fail)  # runs before the metrics' own hook, which then never sees it
    response = app.test_client().post("/messages", json={"message": "x"})
    assert response.status_code == 500
    text = scrape(app)
    assert value(text, "flask_http_request_exceptions_total", method="POST", status="500") == 1
    assert value(text, "flask_http_request_total", method="POST", status="500") == 1
    assert value(text, "flask_http_request_duration_seconds_count", status="500") == 1


MULTIPROCESS_PROGRAM = """
import os, sys
from prometheus_client import Counter, values
from service.speedups import cache_pid_for_multiprocess_values
cache_pid_for_multiprocess_values()
assert values.ValueClass.__name__ == "MmapedValue"
counter = Counter("forks", "Counted by two processes")
counter.inc()
child = os.fork()
if child == 0:
    counter.inc(10)  # a value of the child's own, in the child's file
    os._exit(0)
os.waitpid(child, 0)
counter.inc()
print(os.getpid(), child)
"""


def test_with_the_pid_cached_each_forked_process_still_counts_in_its_own_file(tmp_path):
    run = run_in_multiprocess_mode(MULTIPROCESS_PROGRAM, tmp_path)
    assert run.returncode == 0, run.stderr
    parent, child = run.stdout.split()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{parent}.db", f"counter_{child}.db"]
    )
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("forks_total") == 12  # 2 in the parent, 10 in the child
