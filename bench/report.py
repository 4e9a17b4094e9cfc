"""Medians over repetitions, ratios ours/reference, and the results as text, JSON and PNG."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from bench.measure import Result


def medians(results: Iterable[Result]) -> list[dict]:
    """One row per (target, server, via, scenario): the medians of its valid runs."""
    groups: dict[tuple, list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.target, r.server, r.via, r.scenario)].append(r)
    rows = []
    for (target, server, via, scenario), runs in groups.items():
        valid = [r for r in runs if r.valid]
        use = valid or runs

        def med(values: Iterable[float]) -> float:
            return round(statistics.median(values), 3)

        rows.append({
            "target": target, "server": server, "via": via, "scenario": scenario,
            "runs": len(runs), "valid_runs": len(valid),
            "rps": med(r.rps for r in use),
            "p50_ms": med(r.p50_ms for r in use),
            "p99_ms": med(r.p99_ms for r in use),
            "app_cpu_us": med(r.cpu_us_per_request["app"] for r in use),
            "nginx_cpu_us": med(r.cpu_us_per_request["nginx"] for r in use),
            "redis_cpu_us": med(r.cpu_us_per_request["redis"] for r in use),
            "worker_rss_mib": max(r.rss_mib["app_worker_max"] for r in use),
        })  # fmt: skip
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Ours against the reference, per (via, scenario): throughput and app CPU per request."""
    by_key = {(r["target"], r["via"], r["scenario"]): r for r in rows}
    out = []
    for (target, via, scenario), ours in by_key.items():
        ref = by_key.get(("reference", via, scenario))
        if target != "ours" or ref is None:
            continue
        out.append({
            "via": via, "scenario": scenario,
            "ours_rps": ours["rps"], "reference_rps": ref["rps"],
            "throughput_ratio": round(ours["rps"] / ref["rps"], 3) if ref["rps"] else None,
            "ours_p99_ms": ours["p99_ms"], "reference_p99_ms": ref["p99_ms"],
            "ours_app_cpu_us": ours["app_cpu_us"], "reference_app_cpu_us": ref["app_cpu_us"],
        })  # fmt: skip
    return out


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of the given columns."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_json(path: Path, document: dict) -> None:
    """The whole run, machine-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def plot(path: Path, comparison: list[dict], title: str) -> None:
    """Throughput and p99 latency of ours and the reference, by way in and scenario."""
    import matplotlib

    matplotlib.use("Agg")  # no screen here
    import matplotlib.pyplot as plt

    labels = [f"{r['via']}\n{r['scenario']}" for r in comparison]
    x = range(len(comparison))
    width = 0.38
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for axis, key, unit in ((top, "rps", "requests/s"), (bottom, "p99_ms", "p99 latency (ms)")):
        axis.bar([i - width / 2 for i in x], [r[f"ours_{key}"] for r in comparison], width,
                 label="ours (instrumented)")  # fmt: skip
        axis.bar([i + width / 2 for i in x], [r[f"reference_{key}"] for r in comparison], width,
                 label="reference (uninstrumented)")  # fmt: skip
        axis.set_ylabel(unit)
        axis.grid(axis="y", alpha=0.3)
    top.legend()
    top.set_title(title)
    bottom.set_xticks(list(x), labels)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(document: dict) -> str:
    """The tables docs/performance.md shows, from a results file."""
    out = [f"Run of {document['started']}: ours `{document['ours_server']}`, reference "
           f"`{document['reference_server']}` (its best in the sweep), "
           f"{document['settings']['reps']} repetitions of {document['settings']['seconds']} s, "
           f"wrk with {document['settings']['connections']} connections.", ""]  # fmt: skip
    out += [table(document["comparison"], list(document["comparison"][0])), ""]
    ceiling = [r for r in document["medians"] if r["scenario"] == "plain"]
    if ceiling:
        out += [f"nginx TLS ceiling (`return 200`): {ceiling[0]['rps']:.0f} req/s, "
                f"p99 {ceiling[0]['p99_ms']} ms", ""]  # fmt: skip
    ours = [r for r in document["medians"] if r["target"] == "ours"]
    out += [table(ours, ["via", "scenario", "rps", "p50_ms", "p99_ms", "app_cpu_us",
                         "nginx_cpu_us", "redis_cpu_us", "worker_rss_mib"]), ""]  # fmt: skip
    for key in ("reference_sweep", "ours_scaling"):
        if key in document:
            out += [f"{key}:", "", table(document[key], ["server", "score_rps"]), ""]
    if "soak" in document:
        samples = document["soak"]["samples"]
        out += ["soak:", "", table(samples, list(samples[0])), ""]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
