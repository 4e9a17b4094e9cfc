"""`make bench` (python -m bench): the service against the reference app, side by side.

--mode shipped (the default, the headline figure in docs/performance.md): the service as
`make run` starts it (supervisor, monitoring, defaults; traces exported to a local OTLP sink
at the shipped sampling), against the reference app at its best gunicorn model (swept) behind
the same nginx, alternating, for POST, GET of one stored digest again and again (hot), GET of
stored digests each asked for once (cold), GET of unknown ones (miss) and GET of one unknown
digest from every connection (miss1, clients polling for a message not yet there); medians over
repetitions, the ratio ours/reference, and for hot a bare nginx with the same TLS answering
the same body (with the edge's access logs, and without). With --soak-minutes: make run's
workers' memory over a long mixed load.

--mode harness (for profiling and sizing): each side in a stack of the test harness.
1. Sweep: the reference app's gunicorn models, to find its best (it is measured at its best).
2. Scaling: the service's throughput against its worker model and count (and its best).
3. Comparison: both, each at its best (or as --ours says), in the same run and alternating,
   through the TLS edge and straight to gunicorn, for POST, GET of stored digests and GET of
   unknown ones; medians over repetitions; the ratio ours/reference.
4. The TLS edge's ceiling: nginx answering by itself.
5. With --soak-minutes: the service's memory over a long mixed load.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import headline, report
from bench.runner import Bench
from bench.shipped import shipped_server
from bench.targets import DIRECT, EDGE, ServerConfig
from native.settings import ROOT
from tests.otlp_receiver import start_receiver

SCENARIOS = [
    (EDGE, "post"),
    (EDGE, "hit"),
    (EDGE, "miss"),
    (DIRECT, "post"),
    (DIRECT, "hit"),
    (DIRECT, "miss"),
]
REFERENCE_CANDIDATES = [
    *(ServerConfig(w, "sync", 1) for w in (2, 3, 4, 5)),
    *(ServerConfig(w, "gthread", 2) for w in (2, 3, 4)),
    ServerConfig(2, "gthread", 4),
]
OURS_CANDIDATES = [
    *(ServerConfig(w, "gthread", 2) for w in (1, 2, 3, 4)),
    *(ServerConfig(w, "sync", 1) for w in (1, 2, 3, 4, 5)),  # 5: the default on 2 cores
]
NO_SWEEP_REFERENCE = ServerConfig(5, "sync", 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--mode",
        choices=("shipped", "harness"),
        default="shipped",
        help="shipped: make run as shipped (the headline); harness: the test "
        "harness's stacks, with the scaling sweep (for profiling)",
    )
    p.add_argument("--seconds", type=float, default=10, help="length of each measured run")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured load before each run")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the comparison")
    p.add_argument("--sweep-seconds", type=float, default=4, help="length of sweep runs")
    p.add_argument("--connections", type=int, default=32, help="wrk's open connections")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads")
    p.add_argument(
        "--no-sweep",
        action="store_true",
        help=f"reference at {NO_SWEEP_REFERENCE.label}, not swept",
    )
    p.add_argument("--reference", help="the reference's model, e.g. 'gthread 2x4'; no sweep")
    p.add_argument("--peer", help="shipped: the instrumented peer's model; no sweep")
    p.add_argument("--soak-minutes", type=float, default=0, help="also a long run for memory")
    p.add_argument(
        "--cold-rate",
        type=float,
        default=8000,
        help="shipped: the highest GET cold rate expected (req/s); sizes the "
        "digests stored for the cold runs (each asked for once)",
    )
    p.add_argument(
        "--no-scaling", action="store_true", help="harness: skip throughput by worker count"
    )
    p.add_argument(
        "--ours",
        default="best",
        help="harness: the service's model: 'best' (default; the best of the scaling sweep, "
        "as the reference is measured at its best), 'shipped' (as shipped: no "
        "WEB_CONCURRENCY etc.), or e.g. 'sync 3', 'gthread 2x2'",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return p.parse_args(argv)


def best_model(bench: Bench, document: dict[str, Any], name: str) -> ServerConfig:
    """The model of "reference" or "peer": --reference/--peer, or the default with
    --no-sweep, or the best of the sweep (both are measured at their best, over the same
    candidates)."""
    given = getattr(bench.args, name)
    if given:
        model = ServerConfig.parse(given)
    elif bench.args.no_sweep:
        model = NO_SWEEP_REFERENCE
    else:
        print(f"sweep: the {name}'s gunicorn models", flush=True)
        bench.phase = "sweep"
        model, document[f"{name}_sweep"] = bench.sweep(name, REFERENCE_CANDIDATES)
    document[f"{name}_server"] = model.label
    return model


def harness(bench: Bench, document: dict[str, Any]) -> None:
    """--mode harness: sweeps, then both apps in harness stacks, every scenario, both ways in."""
    args = bench.args
    # "best" without the scaling sweep: as shipped
    named = args.ours not in ("best", "shipped")
    ours = ServerConfig.parse(args.ours) if named else shipped_server()
    document["ours_server"] = ours.label
    reference = best_model(bench, document, "reference")
    if not args.no_scaling:
        print("scaling: the service by worker model and count", flush=True)
        bench.phase = "scaling"
        best, document["ours_scaling"] = bench.sweep("ours", OURS_CANDIDATES)
        if args.ours == "best":
            ours = best
            document["ours_server"] = ours.label
    print(f"comparison: ours ({ours.label}) and reference ({reference.label})", flush=True)
    bench.phase = "comparison"
    spans_before = bench.sink.count
    targets = [bench.start("ours", ours), bench.start("reference", reference)]
    try:
        for rep in range(args.reps):
            print(f"repetition {rep + 1} of {args.reps}", flush=True)
            order = targets if rep % 2 == 0 else targets[::-1]
            for via, scenario in SCENARIOS:
                for target in order:
                    bench.run(target, via, scenario, args.seconds)
        for _ in range(args.reps):
            bench.run(targets[1], EDGE, "plain", args.seconds)
    finally:
        for target in targets:
            target.stop()
    document["spans_exported_in_comparison"] = bench.sink.count - spans_before
    if args.soak_minutes:
        print(f"soak: {args.soak_minutes} minutes of mixed load", flush=True)
        target = bench.start("ours", ours)
        try:
            document["soak"] = bench.soak(target, args.soak_minutes, target.rss_mib)
        finally:
            target.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shipped = args.mode == "shipped"
    sink = start_receiver(keep=shipped)  # shipped: spans kept to tell server spans apart
    peer_sink = start_receiver(keep=False)
    document: dict[str, Any] = {
        "mode": args.mode,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        bench = Bench(args, Path(scratch), sink, peer_sink)
        try:
            if shipped:
                models = [best_model(bench, document, n) for n in ("reference", "peer")]
                headline.shipped(bench, document, *models)
            else:
                harness(bench, document)
        finally:
            sink.close()
            peer_sink.close()
    comparison_runs = [r for r in bench.results if r.phase == "comparison"]
    rows = report.medians(comparison_runs)
    document.update(medians=rows, runs=[r.to_json() for r in bench.results])
    if shipped:
        document.update(report.shipped_tables(rows))
        comparison = document["comparison"]
    else:
        comparison = document["comparison"] = report.ratios(rows)
    stamp = document["started"].replace(":", "")
    report.write_json(args.out / f"bench-{stamp}.json", document)
    report.plot(
        args.out / f"bench-{stamp}.png",
        comparison,
        f"ours ({document['ours_server']}) vs reference ({document['reference_server']})"
        + (f" and peer ({document['peer_server']})" if "peer_server" in document else "")
        + f", medians of {args.reps}",
    )
    print()
    print(report.markdown(document))
    print(f"results: {args.out}/bench-{stamp}.json and .png")
    return 0 if all(r.valid for r in bench.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
