"""The benchmark's targets (docs/performance.md), checked against a shipped run's medians:
for each scenario, ours against the uninstrumented reference, the instrumented peer and the
bare nginx, each bound stated beside what was measured. Never a timed test: a report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The scenarios served by the app (POST and the GETs it answers) and the edge's cache (hot).
APP_SCENARIOS = ("post", "cold", "miss", "miss1")
CEILING = "ceiling-nolog"  # the bare nginx: the edge's TLS, no logs, no proxy


@dataclass(frozen=True)
class Objective:
    """Ours' throughput over another's, at least `bound` (or p99 at most theirs)."""

    what: str  # "throughput" or "p99"
    other: str  # reference, peer, ceiling-nolog
    bound: float  # throughput: the least ratio; p99: the most ratio


def objectives(scenario: str) -> list[Objective]:
    """What ours must reach in a scenario."""
    if scenario == "hot":
        throughput = [
            Objective("throughput", "reference", 10),
            Objective("throughput", CEILING, 0.8),
        ]
    elif scenario in APP_SCENARIOS:
        throughput = [
            Objective("throughput", "reference", 0.9),
            Objective("throughput", "peer", 2),
        ]
    else:
        return []
    return [*throughput, Objective("p99", "reference", 1), Objective("p99", "peer", 1)]


def check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per objective whose targets were all measured: the ratio, the bound, met."""
    by = {(r["target"], r["scenario"]): r for r in rows}
    out = []
    for (target, scenario), ours in by.items():
        if target != "ours":
            continue
        for goal in objectives(scenario):
            other = by.get((goal.other, scenario))
            if other is None:
                continue
            if goal.what == "throughput":
                ratio = ours["rps"] / other["rps"] if other["rps"] else 0.0
                met = ratio >= goal.bound
                bound = f">= {goal.bound:g}"
            else:
                ratio = ours["p99_ms"] / other["p99_ms"] if other["p99_ms"] else float("inf")
                met = ratio <= goal.bound
                bound = f"<= {goal.bound:g}"
            out.append(
                {
                    "scenario": scenario,
                    "measure": f"{goal.what}, ours / {goal.other}",
                    "ours": ours["rps"] if goal.what == "throughput" else ours["p99_ms"],
                    "theirs": (other["rps"] if goal.what == "throughput" else other["p99_ms"]),
                    "ratio": round(ratio, 3),
                    "bound": bound,
                    "met": "yes" if met else "NO",
                }
            )
    return out


def extra_cpu(rows: list[dict[str, Any]], other: str) -> list[dict[str, Any]]:
    """Where ours' CPU per request goes beyond another's, by part: what each part costs."""
    by = {(r["target"], r["scenario"]): r for r in rows}
    out = []
    for (target, scenario), ours in by.items():
        theirs = by.get((other, scenario))
        if target != "ours" or theirs is None:
            continue
        parts = [k for k in ours if k.endswith("_cpu_us")]
        out.append(
            {
                "scenario": scenario,
                **{k: round(ours[k] - theirs.get(k, 0.0), 1) for k in parts},
            }
        )
    return out
