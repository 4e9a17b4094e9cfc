"""Medians over repetitions, ratios ours/reference, and the results as text, JSON and PNG."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import objectives
from bench.measure import Result

# The columns of ours in a --mode harness run's tables.
OURS_COLUMNS = "via scenario rps p50_ms p99_ms app_cpu_us nginx_cpu_us redis_cpu_us worker_rss_mib"


def column(part: str) -> str:
    """The medians' column of a part's CPU per request, e.g. log_writers_cpu_us."""
    return f"{part.replace(' ', '_')}_cpu_us"


def medians(results: Iterable[Result]) -> list[dict[str, Any]]:
    """One row per (target, server, via, scenario): the medians of its valid runs."""
    groups: dict[tuple[str, str, str, str], list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.target, r.server, r.via, r.scenario)].append(r)
    rows = []
    for (target, server, via, scenario), runs in groups.items():
        valid = [r for r in runs if r.valid]
        use = valid or runs

        def med(values: Iterable[float]) -> float:
            return round(statistics.median(values), 3)

        parts = list(dict.fromkeys(p for r in use for p in r.cpu_us_per_request))
        row = {
            "target": target,
            "server": server,
            "via": via,
            "scenario": scenario,
            "runs": len(runs),
            "valid_runs": len(valid),
            "rps": med(r.rps for r in use),
            "p50_ms": med(r.p50_ms for r in use),
            "p99_ms": med(r.p99_ms for r in use),
            **{column(p): med(r.cpu_us_per_request.get(p, 0) for r in use) for p in parts},
            "total_cpu_us": med(sum(r.cpu_us_per_request.values()) for r in use),
            "worker_rss_mib": max(r.rss_mib.get("app_worker_max", 0) for r in use),
        }
        traced = [r.traces() for r in use if r.traces()]
        for key in ("spans_per_s", "traced_rps", "traced_share"):
            if traced:
                row[key] = med(t[key] for t in traced)
        rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours against the reference, per (via, scenario): throughput and app CPU per request."""
    by_key = {(r["target"], r["via"], r["scenario"]): r for r in rows}
    out = []
    for (target, via, scenario), ours in by_key.items():
        ref = by_key.get(("reference", via, scenario))
        if target != "ours" or ref is None:
            continue
        out.append(
            {
                "via": via,
                "scenario": scenario,
                "ours_rps": ours["rps"],
                "reference_rps": ref["rps"],
                "throughput_ratio": round(ours["rps"] / ref["rps"], 3) if ref["rps"] else None,
                "ours_p99_ms": ours["p99_ms"],
                "reference_p99_ms": ref["p99_ms"],
                "ours_app_cpu_us": ours["app_cpu_us"],
                "reference_app_cpu_us": ref["app_cpu_us"],
            }
        )
    return out


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of the given columns."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """The whole run, machine-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


BARS = (
    ("ours", "ours (instrumented)"),
    ("reference", "reference (uninstrumented)"),
    ("peer", "peer (instrumented by the libraries' docs)"),
)


def plot(path: Path, comparison: list[dict[str, Any]], title: str) -> None:
    """Throughput and p99 latency of ours, the reference and (if measured) the instrumented
    peer, by way in and scenario."""
    import matplotlib

    matplotlib.use("Agg")  # no screen here
    import matplotlib.pyplot as plt

    labels = [f"{r['via']}\n{r['scenario']}" for r in comparison]
    bars = [(name, label) for name, label in BARS if f"{name}_rps" in comparison[0]]
    width = 0.8 / len(bars)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for axis, key, unit in ((top, "rps", "requests/s"), (bottom, "p99_ms", "p99 latency (ms)")):
        for n, (name, label) in enumerate(bars):
            offset = (n - (len(bars) - 1) / 2) * width
            axis.bar(
                [i + offset for i in range(len(comparison))],
                [r[f"{name}_{key}"] for r in comparison],
                width,
                label=label,
            )
        axis.set_ylabel(unit)
        axis.grid(axis="y", alpha=0.3)
    top.legend()
    top.set_title(title)
    bottom.set_xticks(list(range(len(comparison))), labels)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def shipped_tables(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """--mode shipped: make run against the reference and the instrumented peer per scenario,
    the ceiling, the targets, the CPU per request by part, and the traces exported."""
    by = {(r["target"], r["scenario"]): r for r in rows}
    comparison = []
    for (target, scenario), ours in by.items():
        ref = by.get(("reference", scenario))
        if target != "ours" or ref is None:
            continue
        row = {
            "via": ours["via"],
            "scenario": scenario,
            "ours_rps": ours["rps"],
            "reference_rps": ref["rps"],
            "throughput_ratio": round(ours["rps"] / ref["rps"], 3) if ref["rps"] else None,
            "ours_p50_ms": ours["p50_ms"],
            "reference_p50_ms": ref["p50_ms"],
            "ours_p99_ms": ours["p99_ms"],
            "reference_p99_ms": ref["p99_ms"],
            "ours_cpu_us": ours["total_cpu_us"],
            "reference_cpu_us": ref["total_cpu_us"],
        }
        peer = by.get(("peer", scenario))
        if peer is not None:
            row |= {
                "peer_rps": peer["rps"],
                "ratio_to_peer": round(ours["rps"] / peer["rps"], 3) if peer["rps"] else None,
                "peer_p99_ms": peer["p99_ms"],
                "peer_cpu_us": peer["total_cpu_us"],
            }
        comparison.append(row)
    ceiling = []
    hot = by.get(("ours", "hot"))
    for name in ("ceiling-log", "ceiling-nolog"):
        bare = by.get((name, "hot"))
        if bare is None:
            continue
        per_ceiling = round(hot["rps"] / bare["rps"], 4) if hot and bare["rps"] else None
        ceiling.append(
            {
                "ceiling": bare["server"],
                "rps": bare["rps"],
                "p50_ms": bare["p50_ms"],
                "p99_ms": bare["p99_ms"],
                "nginx_cpu_us": bare["nginx_cpu_us"],
                "ours_hot_rps": hot["rps"] if hot else None,
                "ours_per_ceiling": per_ceiling,
            }
        )
    tables = {
        "comparison": comparison,
        "ceiling": ceiling,
        "targets": objectives.check(rows),
        "extra_cpu_over_reference": objectives.extra_cpu(rows, "reference"),
        "extra_cpu_over_peer": objectives.extra_cpu(rows, "peer"),
    }
    for target in ("ours", "reference", "peer"):
        mine = [r for r in rows if r["target"] == target]
        cpu = [k for k in (mine[0] if mine else {}) if k.endswith("_cpu_us")]
        tables[f"cpu_{target}"] = [
            {"scenario": r["scenario"], "rps": r["rps"], **{k: r[k] for k in cpu}} for r in mine
        ]
    tables["traces"] = [
        {
            "scenario": r["scenario"],
            "rps": r["rps"],
            **{k: r[k] for k in ("spans_per_s", "traced_rps", "traced_share") if k in r},
        }
        for r in rows
        if r["target"] == "ours"
    ]
    return tables


def section(title: str, rows: list[dict[str, Any]]) -> list[str]:
    """A titled table, or nothing for no rows."""
    if not rows:
        return []
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [title, "", table(rows, columns), ""]


def shipped_markdown(document: dict[str, Any]) -> str:
    """The tables of a --mode shipped run."""
    settings = document["settings"]
    out = [
        f"Run of {document['started']}: ours `{document['ours_server']}` (make run as "
        f"shipped), reference `{document['reference_server']}`, "
        f"{settings['reps']} repetitions of {settings['seconds']} s after "
        f"{settings['warmup']} s of warm-up, wrk with {settings['connections']} "
        "connections, through the TLS edge.",
        "",
    ]
    if "peer_server" in document:
        out[0] = out[0].replace(
            ", reference", f", instrumented peer `{document['peer_server']}`, reference"
        )
    out += section("ours / reference and the instrumented peer:", document["comparison"])
    out += section("the targets (docs/performance.md):", document.get("targets", []))
    out += section(
        "GET hot against a bare nginx answering the same body (the ceiling):",
        document.get("ceiling", []),
    )
    out += section("make run, CPU µs per request by part:", document.get("cpu_ours", []))
    out += section("reference, CPU µs per request by part:", document.get("cpu_reference", []))
    out += section("instrumented peer, CPU µs per request by part:", document.get("cpu_peer", []))
    out += section(
        "make run's CPU µs per request beyond the reference's, by part:",
        document.get("extra_cpu_over_reference", []),
    )
    out += section(
        "make run's CPU µs per request beyond the instrumented peer's, by part:",
        document.get("extra_cpu_over_peer", []),
    )
    out += section(
        "traces exported by make run (a traced request: one server span):",
        document.get("traces", []),
    )
    if "make_run_idle_cpu_cores" in document:
        out += [
            f"make run's CPU while the others ran (monitoring, mostly): "
            f"{document['make_run_idle_cpu_cores']} cores",
            "",
        ]
    if "trace_totals" in document:
        t = document["trace_totals"]
        out += [
            f"over all of make run's runs (warm-ups included): {t['spans']} spans, "
            f"{t['server_spans']} traced requests of {t['requests']} "
            f"(traced share {t['traced_share']})",
            "",
        ]
    if "peer_signals" in document:
        s = document["peer_signals"]
        counted = (
            f"{s['requests_counted_by_metrics']} counted by its metrics, "
            f"{s['json_access_lines']} JSON access lines"
            if "error" not in s
            else f"its metrics unread ({s['error']})"
        )
        out += [
            f"the instrumented peer's signals over its runs: {s['requests']} requests sent, "
            f"{counted}, {s['spans']} spans exported",
            "",
        ]
    out += section("reference_sweep:", document.get("reference_sweep", []))
    out += section("peer_sweep:", document.get("peer_sweep", []))
    if "soak" in document:
        out += section(f"soak ({document['soak']['minutes']} min):", document["soak"]["samples"])
    return "\n".join(out)


def markdown(document: dict[str, Any]) -> str:
    """The tables docs/performance.md shows, from a results file."""
    if document.get("mode") == "shipped":
        return shipped_markdown(document)
    out = [
        f"Run of {document['started']}: ours `{document['ours_server']}`, reference "
        f"`{document['reference_server']}` (its best in the sweep), "
        f"{document['settings']['reps']} repetitions of {document['settings']['seconds']} s, "
        f"wrk with {document['settings']['connections']} connections.",
        "",
    ]
    out += [table(document["comparison"], list(document["comparison"][0])), ""]
    ceiling = [r for r in document["medians"] if r["scenario"] == "plain"]
    if ceiling:
        out += [
            f"nginx TLS ceiling (`return 200`): {ceiling[0]['rps']:.0f} req/s, "
            f"p99 {ceiling[0]['p99_ms']} ms",
            "",
        ]
    ours = [r for r in document["medians"] if r["target"] == "ours"]
    out += [table(ours, OURS_COLUMNS.split()), ""]
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
