"""The Grafana dashboards as files, and every PromQL query their panels run."""

from __future__ import annotations

import json
import re

from native.stack import ROOT

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


# (dashboard file, panel title, PromQL) for every query of every panel.
QUERIES = [
    (name, panel["title"], target["expr"])
    for name, board in DASHBOARDS.items()
    for panel in panels(board)
    for target in panel.get("targets", [])
]


def substitute(expr: str) -> str:
    """The expression as Grafana sends it with every variable at "All"."""
    expr = expr.replace("$__rate_interval", "30s")
    return re.sub(r"\$(route|instance)\b", ".*", expr)
