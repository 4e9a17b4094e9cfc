"""Alertmanager's inhibit rules, as make run renders them, on a real Alertmanager: alerts are
posted to its API as Prometheus would send them, and each is checked for being held back or
not. Only a cause that stops the API may silence the API's pages, and a Redis's own alerts
are silenced by that Redis only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.harness import Stack, make_stack
from tests.helpers import eventually

pytestmark = pytest.mark.stack  # starts Alertmanager

BURN = {"alertname": "EdgeAvailabilityBudgetBurnFast", "severity": "critical"}
NODE_1, NODE_2 = "redis-1:6379", "redis-2:6379"


def persistence(instance: str) -> dict[str, str]:
    return {"alertname": "RedisPersistenceFailing", "severity": "critical", "instance": instance}


CASES = {
    "a cluster master down mutes only its own alerts": (
        {"alertname": "RedisClusterMasterDown", "severity": "critical", "instance": NODE_1},
        {"held": [persistence(NODE_1)], "sent": [BURN, persistence(NODE_2)]},
    ),
    "a cluster replica down mutes only its own alerts": (
        {"alertname": "RedisClusterReplicaDown", "severity": "warning", "instance": NODE_2},
        {"held": [persistence(NODE_2)], "sent": [BURN, persistence(NODE_1)]},
    ),
    "the single Redis down explains the API's pages, not the edge probe": (
        {"alertname": "RedisDown", "severity": "critical", "instance": NODE_1},
        {
            "held": [BURN, {"alertname": "AppInstanceNotReady", "severity": "critical"}],
            "sent": [{"alertname": "EdgeProbeFailing", "severity": "critical"}],
        },
    ),
    "slots uncovered explain the API's pages": (
        {"alertname": "RedisClusterSlotsUncovered", "severity": "critical", "instance": NODE_1},
        {"held": [BURN], "sent": [persistence(NODE_2)]},
    ),
    "Alertmanager unreachable explains the dropped notifications": (
        {"alertname": "PrometheusNotificationsFailing", "severity": "critical", "instance": "p"},
        {
            "held": [{"alertname": "PrometheusNotificationsDropped", "instance": "p"}],
            "sent": [{"alertname": "PrometheusNotificationsDropped", "instance": "q"}],
        },
    ),
    "the blackbox exporter down explains the readiness probes missing": (
        {"alertname": "PageSourceMissing", "severity": "critical", "job": "blackbox"},
        {
            "held": [{"alertname": "ScrapeTargetMissing", "job": "app-ready"}],
            "sent": [{"alertname": "ScrapeTargetMissing", "job": "node"}],
        },
    ),
    "every app instance down explains the edge probe": (
        {"alertname": "AppAllInstancesDown", "severity": "critical"},
        {"held": [BURN, {"alertname": "EdgeProbeFailing", "severity": "critical"}], "sent": []},
    ),
}


@pytest.fixture
def alertmanager(tmp_path) -> Iterator[Stack]:
    stack = make_stack(tmp_path, ("alertmanager",))
    stack.start()
    yield stack
    stack.stop()


def post(stack: Stack, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(UTC)
    body = [
        {
            "labels": labels,
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }
        for labels in alerts
    ]
    url = f"http://{stack.cfg.address('alertmanager')}/api/v2/alerts"
    requests.post(url, json=body, timeout=5).raise_for_status()


def held_back(stack: Stack) -> dict[frozenset, bool]:
    """Every alert Alertmanager has, by its labels: whether an inhibit rule holds it back."""
    url = f"http://{stack.cfg.address('alertmanager')}/api/v2/alerts"
    return {
        frozenset(a["labels"].items()): bool(a["status"]["inhibitedBy"])
        for a in requests.get(url, timeout=5).json()
    }


@pytest.mark.parametrize("cause, expected", CASES.values(), ids=CASES.keys())
def test_a_cause_holds_back_exactly_what_it_explains(alertmanager, cause, expected):
    symptoms = [*expected["held"], *expected["sent"]]
    post(alertmanager, [cause, *symptoms])
    want = {frozenset(s.items()): s in expected["held"] for s in symptoms}
    want[frozenset(cause.items())] = False

    def settled() -> dict[frozenset, bool] | None:
        now = held_back(alertmanager)
        return now if now == want else None

    eventually(settled, seconds=15)
