"""The Grafana dashboards as files, and every PromQL query their panels and annotations run."""

from __future__ import annotations

import json
import re

from native.settings import ROOT

GRAFANA = ROOT / "grafana"
DASHBOARDS = {
    p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))
}
# Series that only make run's supervisor writes (native/finish.py): their panels are run
# against `make run` as shipped (tests/test_make_run.py), not the test harness's stack.
SUPERVISOR_METRICS = "supervisor_component_"


def panels(board: dict) -> list[dict]:
    """Every panel of a dashboard, those inside rows included."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


# The panels that answer "is it healthy?", by dashboard: tests/test_dashboards_stack.py
# runs each against the failures it exists to show, and it must turn red.
HEALTH = {
    "messages-overview.json": ["Alerts firing"],
    "messages-edge.json": ["Probe"],
    "messages-redis.json": ["Redis up"],
    "messages-resources.json": ["Unhealthy targets", "Health by target"],
}
# Grafana's reds (its palette's shades of the one colour).
REDS = {"red", "dark-red", "semi-dark-red", "light-red", "super-light-red"}

# (dashboard file, panel title, PromQL) for every query of every panel.
QUERIES = [
    (name, panel["title"], target["expr"])
    for name, board in DASHBOARDS.items()
    for panel in panels(board)
    for target in panel.get("targets", [])
]

# (dashboard file, annotation name, PromQL) for every annotation query. Grafana runs them as
# range queries over the dashboard's time range and marks where a series has a value above 0.
ANNOTATIONS = [
    (name, annotation["name"], annotation["expr"])
    for name, board in DASHBOARDS.items()
    for annotation in board["annotations"]["list"]
    if annotation["datasource"]["type"] == "prometheus"
]

# What each query variable stands for at its default, "All": its allValue.
ALL = {
    variable["name"]: variable["allValue"]
    for board in DASHBOARDS.values()
    for variable in board["templating"]["list"]
    if variable["type"] == "query" and variable.get("includeAll")
}
# A variable in an expression as Grafana writes it: $name or ${name}. (${1} in label_replace
# is a regex group, not a variable: Grafana leaves names it does not know alone.)
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def substitute(expr: str) -> str:
    """The expression as Grafana sends it with every variable at "All"; a variable the
    dashboards do not define is left as it is (the tests check that none is)."""
    expr = expr.replace("$__rate_interval", "30s")
    return VARIABLE.sub(lambda m: ALL.get(m[1] or m[2], m[0]), expr)


def datasource_uid(board: dict, reference: dict) -> str:
    """The provisioned uid a panel's, target's or annotation's datasource stands for: a
    ${name} template variable at its default, or the uid itself."""
    found = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", reference["uid"])
    if not found:
        return reference["uid"]
    (variable,) = [v for v in board["templating"]["list"] if v["name"] in found.groups()]
    assert variable["type"] == "datasource", variable["name"]
    return variable["current"]["value"]
