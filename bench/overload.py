"""`make bench-overload`: the edge under several times the load it can serve, with its
shedding (EDGE_APP_MAX_CONNS, as shipped) and without it (the same stack with a limit no load
reaches: every request queues at the app), side by side in one run, alternating.

Two kinds of clients (bench/wrk/overload.lua): "at-once", wrk's own, sends again as soon as
it has an answer, so every refusal comes straight back (the worst case for shedding on a
machine that also runs the load generator: refusing takes CPU); "retry-after" waits a 503's
Retry-After first, as the contract asks.

For each number of wrk connections: the requests served (201) and shed (503) per second, the
p50 and p99 of the served ones (nginx's own $request_time, from its access log: wrk cannot
tell latencies apart by status), anything else (502, 504, timeouts), and then how soon the
service is back to normal: how soon a POST is served again once the load ends, and the slowest
of 20 sequential POSTs then.
Workers killed for a timeout are counted from the app's log. The rate limit per client is
lifted (one load generator is one address).

Settings (environment): BENCH_OVERLOAD_CONNECTIONS (default "32,256,1024"),
BENCH_OVERLOAD_CLIENTS (default "at-once,retry-after"), BENCH_OVERLOAD_SECONDS (per run,
default 10), BENCH_OVERLOAD_ROUNDS (default 2).
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.targets import NO_RATE_LIMIT
from native.settings import ROOT
from tests.harness import CORE, Stack, edge_session, make_stack

# One load generator is one client address: the per-client rate limit is lifted.
WRK_SCRIPT = ROOT / "bench" / "wrk" / "overload.lua"
UNLIMITED = "1000000"  # no load here reaches it: the old behaviour, every request queued


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wrk(stack: Stack, connections: int, clients: str, seconds: int, run_id: str) -> None:
    threads = min(4, connections)
    argv = [
        "wrk", f"--threads={threads}", f"--connections={connections}",
        f"--duration={seconds}s", "--timeout=10s", f"--script={WRK_SCRIPT}",
        stack.url, "--", run_id, clients,
    ]  # fmt: skip
    subprocess.run(argv, capture_output=True, text=True, check=True)


def recovery(stack: Stack, n: int = 20) -> tuple[float, float, set[str]]:
    """Right after the load: how long until a POST is served again (until then the requests
    still in flight hold the app's connections, or its backlog), then the slowest of n
    sequential POSTs, both in ms; and the statuses seen before the first was served. Sent to
    /messages?after: told apart from the load's lines."""
    url = f"{stack.url}/messages?after"
    seen = set()
    with edge_session() as session:
        ended = time.perf_counter()
        while (r := session.post(url, json={"message": f"after {time.time()}"})).status_code != 201:
            assert r.status_code in (502, 503, 504) and time.perf_counter() - ended < 30, r.text
            seen.add(f"{r.status_code} after the load")
            time.sleep(0.05)
        back = time.perf_counter() - ended
        slowest = 0.0
        for i in range(n):
            started = time.perf_counter()
            r = session.post(url, json={"message": f"after {i} {started}"})
            slowest = max(slowest, time.perf_counter() - started)
            assert r.status_code == 201, r.text
    return back * 1000, slowest * 1000, seen


def one_run(
    stack: Stack, connections: int, clients: str, seconds: int, run_id: str
) -> dict[str, Any]:
    time.sleep(1.5)  # nginx writes its log at least once a second: the last run's lines out
    before = len(stack.edge_lines())
    wrk(stack, connections, clients, seconds, run_id)
    back_ms, after_ms, seen_after = recovery(stack)
    time.sleep(1.5)
    lines = [line for line in stack.edge_lines()[before:] if line["route"] == "/messages"]
    lines = [line for line in lines if not line["uri"].startswith("/messages?after")]
    served = [line["request_time"] * 1000 for line in lines if line["status"] == 201]
    shed = sum(1 for line in lines if line["status"] == 503)
    other = sum(1 for line in lines if line["status"] not in (201, 503))
    others = {str(line["status"]) for line in lines if line["status"] not in (201, 503)}
    return {
        "served_per_s": len(served) / seconds,
        "shed_per_s": shed / seconds,
        "other": other,
        "other_statuses": others | seen_after,
        "served_p50_ms": p(served, 0.50),
        "served_p99_ms": p(served, 0.99),
        "back_to_serving_ms": back_ms,
        "recovery_slowest_ms": after_ms,
    }


def worker_timeouts(stack: Stack) -> int:
    return (stack.log_dir / "app.log").read_text().count("WORKER TIMEOUT")


def main() -> int:
    connections = [int(c) for c in setting("BENCH_OVERLOAD_CONNECTIONS", "32,256,1024").split(",")]
    seconds = int(setting("BENCH_OVERLOAD_SECONDS", "10"))
    rounds = int(setting("BENCH_OVERLOAD_ROUNDS", "2"))
    kinds = setting("BENCH_OVERLOAD_CLIENTS", "at-once,retry-after").split(",")
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        limits = {"shipped": "", "no shedding": UNLIMITED}  # "": the shipped default
        stacks = {}
        for name, limit in limits.items():
            folder = Path(tmp) / name.replace(" ", "-")
            folder.mkdir()
            limits = {"EDGE_APP_MAX_CONNS": limit, **NO_RATE_LIMIT}
            stacks[name] = make_stack(folder, CORE, None, WEB_CONCURRENCY="", **limits)
        for stack in stacks.values():
            stack.start()
        try:
            results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
            for r in range(rounds):
                for clients in kinds:
                    for c in connections:
                        for name, stack in stacks.items():  # alternating, in one run
                            run_id = f"{name[0]}{clients[0]}{r}{c}"
                            run = one_run(stack, c, clients, seconds, run_id)
                            results.setdefault((clients, name, c), []).append(run)
            timeouts = {name: worker_timeouts(stack) for name, stack in stacks.items()}
        finally:
            for stack in stacks.values():
                stack.stop()
    print(report(results, kinds, connections, timeouts, seconds, rounds))
    return 0


def report(
    results: dict[tuple[str, str, int], list[dict[str, Any]]], kinds: list[str],
    connections: list[int], timeouts: dict[str, int], seconds: int, rounds: int,
) -> str:  # fmt: skip
    keys = ["served_per_s", "shed_per_s", "other", "served_p50_ms", "served_p99_ms",
            "back_to_serving_ms", "recovery_slowest_ms"]  # fmt: skip
    out = [
        f"Overload: POST through the TLS edge, wrk {seconds} s per run, medians of {rounds}",
        "",
        "| clients | connections | edge | served/s | shed (503)/s | other | served p50 ms | "
        "served p99 ms | serving again after, ms | slowest of 20 POSTs then, ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for clients, c, name in itertools.product(kinds, connections, ("shipped", "no shedding")):
        runs = results[(clients, name, c)]
        cells = [statistics.median(run[k] for run in runs) for k in keys]
        out.append(
            f"| {clients} | {c} | {name} | "
            + " | ".join(f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in cells)
            + " |"
        )
    out.append("")
    for edge in ("shipped", "no shedding"):
        seen = {s for (_, e, _), runs in results.items() if e == edge for run in runs
                for s in run["other_statuses"]}  # fmt: skip
        out.append(f"other statuses seen, {edge}: {sorted(seen)}")
    out.append(f"workers killed for a timeout: {timeouts}")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
