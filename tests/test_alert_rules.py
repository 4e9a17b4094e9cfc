"""The alerting and recording rules: valid, unit-tested by promtool case by case, and each
alert documented with a runbook."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from native.settings import ROOT
from tests.dashboards import DASHBOARDS, QUERIES, panels
from tests.helpers import RULE_FILES, prometheus_rules

PROMETHEUS = ROOT / "monitoring" / "prometheus"
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
RUNBOOKS = (ROOT / "docs" / "runbooks.md").read_text()


ALERTS = prometheus_rules("alert")
RECORDS = {rule["record"] for rule in prometheus_rules("record")}
CASES = [case for path in TEST_FILES for case in yaml.safe_load(path.read_text())["tests"]]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)


def test_rules_are_valid():
    check = run("promtool", "check", "rules", *map(str, RULE_FILES))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.stack  # no stack, but ~40 s of promtool's CPU: kept out of the quick subset
def test_promtool_unit_tests_pass():
    check = run("promtool", "test", "rules", *map(str, TEST_FILES))
    assert check.returncode == 0, check.stdout + check.stderr


HEARTBEAT = "Watchdog"  # always fires, by design: there is no case where it must not


@pytest.mark.parametrize("alert", [a["alert"] for a in ALERTS])
def test_every_alert_has_a_case_where_it_fires_and_one_where_it_must_not(alert):
    outcomes = [
        bool(t["exp_alerts"])
        for case in CASES
        for t in case.get("alert_rule_test", [])
        if t["alertname"] == alert
    ]
    assert True in outcomes, f"no test where {alert} fires"
    if alert == HEARTBEAT:
        assert False not in outcomes, "the heartbeat must fire always"
    else:
        assert False in outcomes, f"no test where {alert} stays silent"


@pytest.mark.parametrize("record", sorted(RECORDS))
def test_every_recording_rule_is_tested(record):
    exprs = [t["expr"] for case in CASES for t in case.get("promql_expr_test", [])]
    assert record in exprs


@pytest.mark.parametrize("alert", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_every_alert_is_labelled_annotated_and_has_a_runbook(alert):
    assert re.fullmatch(r"(?:[A-Z][a-z0-9]*|TLS)+", alert["alert"]), "CamelCase names"
    severities = ("none",) if alert["alert"] == HEARTBEAT else ("critical", "warning")
    assert alert["labels"]["severity"] in severities
    notes = alert["annotations"]
    assert notes["summary"] and "$value" in notes["description"]
    # An absolute link, from the base Prometheus is given (RUNBOOK_BASE_URL), to its section.
    base, _, anchor = notes["runbook_url"].partition("#")
    assert base == "{{ $externalLabels.runbook_base_url }}"
    assert anchor == alert["alert"].lower()
    assert f"## {alert['alert']}" in RUNBOOKS, "the runbook section exists"


def test_the_latency_thresholds_the_rules_count_are_boundaries_of_every_request_histogram():
    """A threshold between two boundaries would be counted at the boundary below it: every
    `le` the rules name is a bucket of the edge's histograms and of the app's."""
    from service.metrics import REQUEST_BUCKETS

    text = "\n".join(rule["expr"] for rule in prometheus_rules("record") + ALERTS)
    thresholds = {float(le) for le in re.findall(r'le="([0-9.]+)"', text)}
    assert thresholds, "the latency SLI counts requests within a bucket"
    mtail = (ROOT / "monitoring" / "mtail" / "edge.mtail").read_text()
    for name in ("edge_http_request_duration_seconds", "edge_upstream_response_duration_seconds"):
        (buckets,) = re.findall(rf"histogram {name} .* buckets (.+)", mtail)
        assert thresholds <= {float(b) for b in buckets.split(",")}, name
    assert thresholds <= set(REQUEST_BUCKETS)


OBJECTIVES = ("slo:edge_availability:error_budget", "slo:edge_latency:error_budget")


def test_each_slo_objective_is_written_once():
    """Each SLO's objective is a number in one place, its error budget's recording rule: no
    other rule, no dashboard query and no panel threshold writes it again (they read the
    series), so changing an objective is a one-line change."""
    recorded = {rule["record"]: rule["expr"] for rule in prometheus_rules("record")}
    numbers = [re.fullmatch(r"vector\(([\d.]+)\)", recorded[name]).group(1) for name in OBJECTIVES]
    assert sorted(float(n) for n in numbers) == [0.001, 0.01]
    literal = re.compile(rf"(?<![\w.])(?:{'|'.join(map(re.escape, numbers))})(?![\d])")
    restated = [
        rule.get("alert") or rule["record"]
        for kind in ("alert", "record")
        for rule in prometheus_rules(kind)
        if literal.search(rule["expr"]) and rule.get("record") not in OBJECTIVES
    ]
    restated += [f"{name}: {title}" for name, title, expr in QUERIES if literal.search(expr)]
    restated += [
        f"{name}: {panel['title']} (threshold)"
        for name, board in DASHBOARDS.items()
        for panel in panels(board)
        for step in panel.get("fieldConfig", {})
        .get("defaults", {})
        .get("thresholds", {})
        .get("steps", [])
        if step["value"] is not None and literal.fullmatch(repr(step["value"]))
    ]
    assert not restated, f"an objective is written again in: {restated}"
    for name in OBJECTIVES:  # and both are read
        assert any(name in rule["expr"] for rule in ALERTS), name
        assert any(name in expr for _, _, expr in QUERIES), name
