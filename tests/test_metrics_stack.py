"""Metrics that tell the truth, on the real stack: gunicorn workers summed by the master,
bounded labels, edge metrics from nginx via mtail, the exporters, and Prometheus scraping
them all."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector

from native.configs import PROMETHEUS_JOB_PORTS
from native.processes import app_env
from tests.harness import EVERYTHING, Stack, edge_session, make_stack
from tests.metrics_text import series_count, value

pytestmark = pytest.mark.stack

COUNT = "flask_http_request_duration_seconds_count"


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory):
    """Every process of make run; two single-threaded workers, so that concurrent requests
    must be spread over both; Prometheus scraping every second."""
    tmp = tmp_path_factory.mktemp("full")
    settings = {
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "1",
        "SCRAPE_INTERVAL": "1s",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }
    stack = make_stack(tmp, EVERYTHING, **settings)
    stack.start()
    yield stack
    stack.stop()


def workers(stack: Stack) -> list[psutil.Process]:
    return psutil.Process(stack.executors["app"].process.pid).children()


def per_worker_counts(stack: Stack, path: str, status: str) -> dict[int, float]:
    """Requests each live worker counted, read from its own multiprocess file."""
    folder = Path(app_env(stack.cfg)["PROMETHEUS_MULTIPROC_DIR"])
    counts = {}
    for proc in workers(stack):
        files = [str(f) for f in folder.glob(f"histogram_{proc.pid}.db")]
        metrics = MultiProcessCollector._read_metrics(files)
        wanted = {"path": path, "status": status}.items()
        # Raw samples: labels as pairs, and each bucket holding only its own observations.
        counts[proc.pid] = sum(
            s.value
            for m in metrics.values()
            for s in m.samples
            if s.name == "flask_http_request_duration_seconds_bucket"
            and wanted <= dict(s.labels).items()
        )
    return counts


def post_many(stack: Stack, messages: list[str]) -> list[int]:
    def post(message: str) -> int:  # a connection of its own for each
        with edge_session() as http:
            r = http.post(stack.url + "/messages", json={"message": message}, timeout=30)
        return r.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(post, messages))


def test_counts_are_exact_across_workers(full_stack):
    before = full_stack.scrape("app_metrics")
    before_edge = full_stack.scrape("mtail")
    n = 120
    statuses = post_many(full_stack, [f"exact-{i}" for i in range(n)])
    assert statuses == [201] * n
    after = full_stack.scrape("app_metrics")

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew(COUNT, method="POST", path="/messages", status="201") == n
    assert grew("flask_http_request_total", method="POST", status="201") == n
    assert grew("messages_stored_total", result="new") == n
    assert grew("messages_redis_command_duration_seconds_count", command="SET") == n
    spread = per_worker_counts(full_stack, "/messages", "201")
    assert len([c for c in spread.values() if c > 0]) >= 2, spread
    assert value(after, "flask_http_requests_in_flight") == 0
    assert value(after, "messages_build_info") == 1

    # The edge counts every one of them too (nginx flushes its buffered lines within 1 s).
    def edge_posts(text: str) -> float:
        return value(text, "edge_http_requests_total", route="/messages", status="201")

    edge_before = edge_posts(before_edge)
    full_stack.executors["mtail"].wait_for(
        lambda: edge_posts(full_stack.scrape("mtail")) - edge_before >= n
    )
    edge_after = edge_posts(full_stack.scrape("mtail"))
    assert edge_after - edge_before == n


def test_series_do_not_grow_with_digests_or_paths(full_stack):
    def edge_total() -> float:
        return value(full_stack.scrape("mtail"), "edge_http_requests_total")

    def hit_everything(tag: str, n: int) -> None:
        start = edge_total()
        for i in range(n):
            full_stack.request("GET", f"/messages/{tag}{i:060d}")
            full_stack.request("GET", f"/messages/not-a-digest-{tag}-{i}")
            full_stack.request("GET", f"/unknown/{tag}/{i}")
        # nginx flushes the edge lines within a second: count only once all have arrived.
        full_stack.executors["mtail"].wait_for(lambda: edge_total() - start >= 3 * n)

    hit_everything("aaaa", 3)  # every kind of label value exists now
    app_before = series_count(full_stack.scrape("app_metrics"))
    edge_before = series_count(full_stack.scrape("mtail"))
    hit_everything("bbbb", 150)
    assert series_count(full_stack.scrape("app_metrics")) == app_before
    assert series_count(full_stack.scrape("mtail")) == edge_before


def test_a_killed_worker_loses_no_counts(full_stack):
    post_many(full_stack, [f"before-kill-{i}" for i in range(20)])
    before = full_stack.scrape("app_metrics")
    victim = workers(full_stack)[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    full_stack.executors["app"].wait_for(lambda: len(workers(full_stack)) == 2)
    after = full_stack.scrape("app_metrics")
    # Only the API's counts: the blackbox exporter probes /readyz every second meanwhile.
    assert value(before, COUNT, path="/messages") >= 20
    assert value(after, COUNT, path="/messages") == value(before, COUNT, path="/messages")
    assert value(after, "messages_stored_total") == value(before, "messages_stored_total")
    assert value(after, "flask_http_requests_in_flight") == 0


def test_edge_counts_what_the_app_never_sees(stack_factory):
    stack = stack_factory(("redis", "app", "mtail", "nginx"))
    too_big = b'{"message": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    json_type = {"Content-Type": "application/json"}
    assert stack.request("POST", "/messages", data=too_big, headers=json_type).status_code == 413
    stack.executors["app"].stop()
    assert stack.request("GET", f"/messages/{'e' * 64}").status_code == 502
    assert stack.request("TRACE", "/messages").status_code == 405

    def edge(**labels: str) -> float:
        return value(stack.scrape("mtail"), "edge_http_requests_total", **labels)

    stack.executors["mtail"].wait_for(lambda: edge() == 3)  # UDP: let the lines arrive
    assert edge(route="/messages/<digest>", method="GET", status="502") == 1
    assert edge(route="/messages", method="POST", status="413") == 1
    assert edge(route="/messages", method="OTHER", status="405") == 1
    text = stack.scrape("mtail")
    assert value(text, "edge_http_request_duration_seconds_count", status="502") == 1


def test_exporters_see_nginx_and_redis(full_stack):
    assert value(full_stack.scrape("nginx_exporter"), "nginx_up") == 1
    # prometheus_client's parser names counter samples with _total, as Prometheus 3 does.
    assert value(full_stack.scrape("nginx_exporter"), "nginx_connections_accepted_total") > 0
    redis_text = full_stack.scrape("redis_exporter")
    assert value(redis_text, "redis_up") == 1
    assert value(redis_text, "redis_memory_used_bytes") > 0
    assert value(redis_text, "redis_aof_enabled") == 1


def test_prometheus_scrapes_every_target(full_stack):
    api = f"http://{full_stack.cfg.address('prometheus')}/api/v1"

    def healthy_jobs() -> set[str]:
        targets = requests.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"] for t in targets if t["health"] == "up"}

    full_stack.executors["prometheus"].wait_for(lambda: healthy_jobs() == set(PROMETHEUS_JOB_PORTS))
    result = requests.get(f"{api}/query", params={"query": "sum by (job) (up)"}, timeout=10).json()
    assert {r["metric"]["job"]: r["value"][1] for r in result["data"]["result"]} == {
        job: "1" for job in PROMETHEUS_JOB_PORTS
    }


def test_metrics_are_not_reachable_through_the_public_port(full_stack):
    for path in ("/metrics", "/metrics/", "/stub_status", "/api/v1/targets"):
        r = full_stack.request("GET", path)
        assert r.status_code == 404
        assert "flask_http" not in r.text and "Active connections" not in r.text
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the tests' own process is clean
