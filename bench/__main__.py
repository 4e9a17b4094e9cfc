"""`make bench` (python -m bench): the service against the reference app, side by side.

1. Sweep: the reference app's gunicorn models, to find its best (it is measured at its best).
2. Scaling: the service's throughput against its worker model and count (and its best).
3. Comparison: both, each at its best (or as --ours says), in the same run and alternating,
   through the TLS edge and straight to gunicorn, for POST, GET of stored digests and GET of
   unknown ones; medians over repetitions; the ratio ours/reference.
4. The TLS edge's ceiling: nginx answering by itself.
5. With --soak-minutes: the service's memory over a long mixed load.

The service runs with everything on: metrics, JSON access logs, and traces exported over
OTLP to a local sink at the default sampling ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.measure import WRK_SCRIPT, Load, Result, measure, rss_mib
from bench.targets import DIRECT, EDGE, ServerConfig, Target, seed, start
from native.otlp_receiver import Receiver, start_receiver
from native.stack import ROOT
from service.config import ServerSettings, default_workers

SCENARIOS = [(EDGE, "post"), (EDGE, "hit"), (EDGE, "miss"),
             (DIRECT, "post"), (DIRECT, "hit"), (DIRECT, "miss")]  # fmt: skip
REFERENCE_CANDIDATES = [
    *(ServerConfig(w, "sync", 1) for w in (2, 3, 4, 5)),
    *(ServerConfig(w, "gthread", 2) for w in (2, 3, 4)),
]
OURS_CANDIDATES = [
    *(ServerConfig(w, "gthread", 2) for w in (1, 2, 3, 4)),
    *(ServerConfig(w, "sync", 1) for w in (1, 2, 3, 4, 5)),  # 5: the default on 2 cores
]
SEED_MESSAGES = [f"bench seed message {i}" for i in range(500)]


def ours_default() -> ServerConfig:
    """The service's process model as shipped (no WEB_CONCURRENCY etc. set)."""
    d = ServerSettings()
    return ServerConfig(default_workers(), d.worker_class, d.threads)


class Bench:
    """Starts targets in a scratch folder, seeds them and keeps every result."""

    def __init__(self, args: argparse.Namespace, folder: Path, sink: Receiver) -> None:
        self.args = args
        self.folder = folder
        self.sink = sink
        self.load = Load(threads=args.wrk_threads, connections=args.connections)
        self.digests_file = folder / "digests.txt"
        self.results: list[Result] = []
        self.phase = ""
        self.started = 0

    def start(self, name: str, server: ServerConfig) -> Target:
        """Start a target and store the seed messages in it."""
        self.started += 1
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": self.sink.endpoint} if name == "ours" else {}
        target = start(name, server, self.folder / f"{self.started}-{name}", env)
        digests = seed(target, SEED_MESSAGES)
        self.digests_file.write_text("\n".join(digests) + "\n")
        return target

    def run(self, target: Target, via: str, scenario: str, seconds: float) -> Result:
        """Measure once and keep the result."""
        run_id = f"{time.time_ns()}"
        result = measure(target, via, scenario, seconds, self.args.warmup, self.load,
                         self.digests_file, run_id)  # fmt: skip
        result.phase = self.phase
        self.results.append(result)
        flag = "" if result.valid else f"  INVALID {result.errors}"
        cpu = result.cpu_us_per_request["app"]
        print(f"  {target.name:9} {target.server.label:12} {via:6} {scenario:5} "
              f"{result.rps:9.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
              f"  app {cpu:5.0f} µs CPU/req{flag}", flush=True)  # fmt: skip
        return result

    def quick_score(self, name: str, server: ServerConfig) -> float:
        """Geometric mean of POST and GET-hit throughput through the edge, short runs."""
        target = self.start(name, server)
        try:
            rps = [self.run(target, EDGE, s, self.args.sweep_seconds).rps for s in ("post", "hit")]
        finally:
            target.stop()
        return statistics.geometric_mean(rps)

    def sweep(self, name: str, candidates: list[ServerConfig]) -> tuple[ServerConfig, list]:
        """Each candidate's score; the best one."""
        scores = [(c, self.quick_score(name, c)) for c in candidates]
        best = max(scores, key=lambda s: s[1])[0]
        return best, [{"server": c.label, "score_rps": round(s, 1)} for c, s in scores]

    def compare(self, ours: ServerConfig, reference: ServerConfig) -> None:
        """Both targets, alternating, every scenario, several times; then nginx's ceiling."""
        targets = [self.start("ours", ours), self.start("reference", reference)]
        try:
            for rep in range(self.args.reps):
                print(f"repetition {rep + 1} of {self.args.reps}", flush=True)
                order = targets if rep % 2 == 0 else targets[::-1]
                for via, scenario in SCENARIOS:
                    for target in order:
                        self.run(target, via, scenario, self.args.seconds)
            for _ in range(self.args.reps):
                self.run(targets[1], EDGE, "plain", self.args.seconds)
        finally:
            for target in targets:
                target.stop()

    def soak(self, server: ServerConfig, minutes: float) -> dict:
        """Mixed load for a while; the workers' memory every 30 s."""
        target = self.start("ours", server)
        samples = []
        argv = ["wrk", f"--threads={self.load.threads}",
                f"--connections={self.load.connections}", f"--duration={round(minutes * 60)}s",
                f"--script={WRK_SCRIPT}", target.url(EDGE), "--", "mix",
                str(self.digests_file), "soak"]  # fmt: skip
        started = time.monotonic()
        try:
            with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as wrk:
                while wrk.poll() is None:
                    samples.append({"minute": round((time.monotonic() - started) / 60, 2),
                                    **rss_mib(target)})  # fmt: skip
                    print(f"  soak {samples[-1]}", flush=True)
                    time.sleep(min(30, minutes * 60 / 4))
                summary = wrk.stdout.read().strip().splitlines()[-1]
        finally:
            target.stop()
        return {"server": server.label, "minutes": minutes, "samples": samples, "wrk": summary}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=float, default=10, help="length of each measured run")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured load before each run")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the comparison")
    p.add_argument("--sweep-seconds", type=float, default=4, help="length of sweep runs")
    p.add_argument("--connections", type=int, default=32, help="wrk's open connections")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads")
    p.add_argument("--no-sweep", action="store_true", help="reference at its default, sync 5")
    p.add_argument("--no-scaling", action="store_true", help="skip throughput by worker count")
    p.add_argument("--soak-minutes", type=float, default=0, help="also a long run for memory")
    p.add_argument(
        "--ours",
        default="best",
        help="the service's model: 'best' (default; the best of the scaling sweep, as the "
        "reference is measured at its best), 'shipped' (as shipped: no WEB_CONCURRENCY etc.), "
        "or e.g. 'sync 3', 'gthread 2x2'",
    )
    p.add_argument("--reference", help="the reference's model; skips the sweep")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # "best" without the scaling sweep: as shipped
    ours = ServerConfig.parse(args.ours) if args.ours not in ("best", "shipped") else ours_default()
    sink = start_receiver(keep=False)  # a collector elsewhere: count only
    document: dict = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "ours_server": ours.label,
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        bench = Bench(args, Path(scratch), sink)
        try:
            if args.reference:
                reference = ServerConfig.parse(args.reference)
            elif args.no_sweep:
                reference = ServerConfig(5, "sync", 1)
            else:
                print("sweep: the reference app's gunicorn models", flush=True)
                bench.phase = "sweep"
                reference, document["reference_sweep"] = bench.sweep(
                    "reference", REFERENCE_CANDIDATES
                )
            document["reference_server"] = reference.label
            if not args.no_scaling:
                print("scaling: the service by worker model and count", flush=True)
                bench.phase = "scaling"
                best, document["ours_scaling"] = bench.sweep("ours", OURS_CANDIDATES)
                if args.ours == "best":
                    ours = best
                    document["ours_server"] = ours.label
            print(f"comparison: ours ({ours.label}) and reference ({reference.label})", flush=True)
            bench.phase = "comparison"
            spans_before = sink.count
            bench.compare(ours, reference)
            document["spans_exported_in_comparison"] = sink.count - spans_before
            if args.soak_minutes:
                print(f"soak: {args.soak_minutes} minutes of mixed load", flush=True)
                document["soak"] = bench.soak(ours, args.soak_minutes)
        finally:
            sink.close()
    rows = report.medians(r for r in bench.results if r.phase == "comparison")
    comparison = report.ratios(rows)
    ceiling = [r for r in rows if r["scenario"] == "plain"]
    document.update(medians=rows, comparison=comparison,
                    runs=[r.to_json() for r in bench.results])  # fmt: skip
    stamp = document["started"].replace(":", "")
    report.write_json(args.out / f"bench-{stamp}.json", document)
    report.plot(
        args.out / f"bench-{stamp}.png",
        comparison,
        f"ours ({ours.label}) vs reference ({reference.label}), medians of {args.reps}",
    )
    print()
    print(report.table(comparison, list(comparison[0]) if comparison else []))
    if ceiling:
        print(
            f"\nnginx TLS ceiling (return 200): {ceiling[0]['rps']:.0f} req/s, "
            f"p99 {ceiling[0]['p99_ms']} ms"
        )
    print(f"\nresults: {args.out}/bench-{stamp}.json and .png")
    return 0 if all(r.valid for r in bench.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
