"""The dashboards on stacks of their own, each scraped every second: every "is it healthy?"
panel turns red in a failure it exists to show (Redis stopped, an app instance's workers
hung, nginx stopped), green before; and a Redis Cluster's messages and memory are counted
once, not once per copy. What a panel shows and where it turns red are read from the
dashboard files: its queries as Grafana sends them, its thresholds and value mappings."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from native.settings import CLUSTER_NODES
from tests.dashboards import DASHBOARDS, HEALTH, REDS, panels, substitute
from tests.harness import EVERYTHING, Stack, cluster_ports_env, make_stack
from tests.helpers import eventually, prometheus_query

pytestmark = pytest.mark.stack

# Seconds a panel may take to turn red: the longest is "Alerts firing" after the edge probe
# fails (EdgeProbeFailing waits 1 min), scraped and evaluated every second here.
TURNS_RED = 120


def panel(dashboard: str, title: str) -> dict:
    (found,) = [p for p in panels(DASHBOARDS[dashboard]) if p["title"] == title]
    return found


def colour(shown: dict, value: float) -> str:
    """The colour Grafana gives a value: its value mapping's, if one applies, else the
    threshold step it reaches (steps are in ascending order; the first is the base)."""
    defaults = shown["fieldConfig"]["defaults"]
    for mapping in defaults.get("mappings", []):
        assert mapping["type"] == "value", "only value mappings are read here"
        for text, result in mapping["options"].items():
            if float(text) == value and "color" in result:
                return result["color"]
    steps = defaults["thresholds"]["steps"]
    found = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            found = step["color"]
    return found


def series(stack: Stack, shown: dict) -> list[tuple[dict, str]]:
    """Each series the panel shows now, with its labels and its colour."""
    found = []
    for target in shown["targets"]:
        answer = prometheus_query(stack.cfg.address("prometheus"), substitute(target["expr"]))
        assert answer["status"] == "success", answer.get("error")
        for r in answer["data"]["result"]:
            found.append((r["metric"], colour(shown, float(r["value"][1]))))
    return found


def is_red(stack: Stack, shown: dict) -> bool:
    """A panel is red when any series it shows is red. One that shows nothing ("No data") is
    not: a failure that empties a panel hides itself."""
    return any(c in REDS for _, c in series(stack, shown))


def is_green(stack: Stack, shown: dict) -> bool:
    shown_now = series(stack, shown)
    return bool(shown_now) and not any(c in REDS for _, c in shown_now)


def red_series(stack: Stack, shown: dict) -> list[dict]:
    return [labels for labels, c in series(stack, shown) if c in REDS]


def stop_redis(stack: Stack) -> Callable[[], None]:
    stack.executors["redis"].stop()
    return lambda: None


def hang_workers(stack: Stack) -> Callable[[], None]:
    """App instance 2's workers stop (SIGSTOP: a deadlock, a worker stuck in a call): its
    gunicorn master still serves the metrics, so its scrape stays up, but its /readyz is
    never answered. (Its master replaces them after the worker timeout, 30 s.)"""
    master = psutil.Process(stack.executors["app-2"].process.pid)
    workers = master.children()
    assert workers
    for w in workers:
        w.send_signal(signal.SIGSTOP)

    def resume() -> None:
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):  # replaced by its master
                w.send_signal(signal.SIGCONT)

    return resume


def stop_nginx(stack: Stack) -> Callable[[], None]:
    stack.executors["nginx"].stop()
    return lambda: None


def app_2(stack: Stack) -> str:
    return f"127.0.0.1:{stack.cfg.app_port(2)}"


# Each failure: how to cause it; the panels that must turn red; for the per-target panel,
# the rows (job, and instance where it matters) that must be among the red ones.
FAILURES = {
    "redis stopped": (
        stop_redis,
        {
            "messages-overview.json": ["Alerts firing"],  # RedisDown
            "messages-redis.json": ["Redis up"],
            "messages-resources.json": ["Unhealthy targets", "Health by target"],
        },
        # Redis, and the readiness of both app instances: neither can serve.
        lambda stack: [
            {"job": "redis"},
            {"job": "app-ready", "instance": stack.cfg.address("app")},
            {"job": "app-ready", "instance": app_2(stack)},
        ],
    ),
    "an app instance's workers hung": (
        hang_workers,
        {"messages-resources.json": ["Unhealthy targets", "Health by target"]},
        lambda stack: [{"job": "app-ready", "instance": app_2(stack)}],
    ),
    "nginx stopped": (
        stop_nginx,
        {
            "messages-overview.json": ["Alerts firing"],  # EdgeProbeFailing
            "messages-edge.json": ["Probe"],
            "messages-resources.json": ["Unhealthy targets", "Health by target"],
        },
        lambda stack: [{"job": "blackbox"}, {"job": "nginx"}],
    ),
}


def test_every_health_panel_is_run_against_a_failure():
    shown = {
        (d, t) for _, by_board, _ in FAILURES.values() for d, ts in by_board.items() for t in ts
    }
    assert shown == {(d, t) for d, ts in HEALTH.items() for t in ts}


@pytest.fixture
def health_stack(tmp_path: Path) -> Iterator[Stack]:
    """The whole native stack with two app instances, scraped and evaluated every second."""
    stack = make_stack(tmp_path, EVERYTHING, SCRAPE_INTERVAL="1s", APP_INSTANCES="2")
    stack.start()
    yield stack
    stack.stop()


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_health_panels_turn_red_in_the_failures_they_exist_to_show(health_stack, failure):
    stack = health_stack
    cause, by_board, rows = FAILURES[failure]
    watched = [(d, t, panel(d, t)) for d, titles in by_board.items() for t in titles]
    for d, t, shown in watched:
        assert eventually(lambda shown=shown: is_green(stack, shown), 60), f"{d} / {t}"

    recover = cause(stack)
    try:
        start = time.monotonic()
        for d, t, shown in watched:
            left = max(1.0, TURNS_RED - (time.monotonic() - start))
            try:
                eventually(lambda shown=shown: is_red(stack, shown), left)
            except Exception:
                pytest.fail(f"{d} / {t} stays {series(stack, shown)} with {failure}")
        for d, t, shown in watched:
            if shown["type"] != "state-timeline":
                continue
            for row in rows(stack):

                def row_red(row: dict = row, shown: dict = shown) -> bool:
                    red = red_series(stack, shown)
                    return any(row.items() <= labels.items() for labels in red)

                assert eventually(row_red, 30), (
                    f"{d} / {t}: {row} not red in {series(stack, shown)}"
                )
    finally:
        recover()


# --- A Redis Cluster: each message is on a master and its replica ---

MESSAGES = 60


@pytest.fixture
def cluster_stack(tmp_path: Path) -> Iterator[Stack]:
    """The six nodes of a native Redis Cluster, joined, with redis_exporter and Prometheus
    scraping every second."""
    nodes = ("redis", *(f"redis-{n}" for n in range(2, CLUSTER_NODES + 1)))
    parts = (*nodes, "redis-cluster", "redis-exporter", "prometheus")
    stack = make_stack(
        tmp_path, parts, SCRAPE_INTERVAL="1s", REDIS_TOPOLOGY="cluster", **cluster_ports_env()
    )
    stack.start()
    yield stack
    stack.stop()


def cluster_client(stack: Stack) -> RedisCluster:
    password = stack.cfg.redis_password_file.read_text().strip()
    first = ClusterNode("127.0.0.1", stack.cfg.redis_node_port(1))
    return RedisCluster(startup_nodes=[first], password=password)


def value(stack: Stack, expr: str) -> float | None:
    """The one value an expression has now; None while it has none."""
    answer = prometheus_query(stack.cfg.address("prometheus"), substitute(expr))
    results = answer["data"]["result"]
    assert len(results) <= 1, results
    return float(results[0]["value"][1]) if results else None


def test_a_cluster_counts_each_message_and_its_memory_once(cluster_stack):
    stack = cluster_stack

    # The join job (make run's and compose's) ends once every node says cluster_state:ok.
    join = stack.executors["redis-cluster"]
    eventually(lambda: not join.running(), 120)
    assert join.process is not None and join.process.returncode == 0
    client = cluster_client(stack)
    for n in range(MESSAGES):
        client.set(f"msg:{n:064x}", f"message {n}")
    # Every copy replicated and scraped: each key is on its master and its replica.
    eventually(lambda: value(stack, "sum(redis_db_keys)") == 2 * MESSAGES, 60)

    (stored,) = panel("messages-redis.json", "Messages stored")["targets"]
    assert value(stack, stored["expr"]) == MESSAGES

    # Capacity for messages is the masters' maxmemory (a replica holds copies).
    password = stack.cfg.redis_password_file.read_text().strip()
    masters = [
        redis.Redis(port=n.port, password=password)
        for n in client.get_nodes()
        if n.server_type == "primary"
    ]
    assert len(masters) == CLUSTER_NODES // 2
    maxmemory = sum(int(m.config_get("maxmemory")["maxmemory"]) for m in masters)
    memory = {
        t["legendFormat"]: t["expr"] for t in panel("messages-redis.json", "Memory")["targets"]
    }
    assert value(stack, memory["maxmemory"]) == maxmemory
    used = sum(m.info("memory")["used_memory"] for m in masters)
    assert value(stack, memory["used"]) == pytest.approx(used, rel=0.2)

    # And each node on its own, where one full node is seen before the total fills.
    by_instance = panel("messages-redis.json", "Memory used of maxmemory by instance")
    (target,) = by_instance["targets"]
    answer = prometheus_query(stack.cfg.address("prometheus"), substitute(target["expr"]))
    assert len(answer["data"]["result"]) == CLUSTER_NODES
    client.close()
    for m in masters:
        m.close()
