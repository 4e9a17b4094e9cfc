"""`make bench`'s headline (--mode shipped): `make run` as shipped against the reference app
at its best behind the same nginx, and a bare nginx answering a GET's body (the ceiling), in
one run, alternating, every scenario, several times."""

from __future__ import annotations

import random
import time
from typing import Any

import requests

from bench.ceiling import Answer, Ceiling, start_ceiling
from bench.digests import HOT_MESSAGE, Digests, check_served, cold_messages, hit_messages, store
from bench.measure import Measured, Result
from bench.runner import Bench
from bench.shipped import ShippedTarget, start_shipped
from bench.targets import DIRECT, EDGE, ServerConfig, Target, start
from bench.traces import SpanTally

SCENARIOS = ("post", "hot", "cold", "miss", "miss1")
EXPORT_WAIT = 6  # seconds: the app's batch span processor exports every 5 s
CHECKED = 5  # stored digests of each kind read back through the API


def seed(bench: Bench, target: ShippedTarget | Target, cold: list[str]) -> requests.Response:
    """Store the hit, hot and cold messages straight in the target's Redis, read a few back
    through its API, and keep its digests files. Returns the hot GET's answer through the edge
    (the third: from the edge's cache, if it has one; it keeps a digest from its second read)."""
    started = time.monotonic()
    client = target.redis()
    hit = store(client, hit_messages())
    (hot,) = store(client, [HOT_MESSAGE])
    cold_digests = store(client, cold)
    pick = random.Random(0)  # noqa: S311 (not a secret)
    sample = [
        *pick.sample(list(zip(hit, hit_messages(), strict=True)), CHECKED),
        *pick.sample(list(zip(cold_digests, cold, strict=True)), CHECKED),
    ]
    # Straight to the app: through the edge these would be in its cache before their run.
    check_served(target.url(DIRECT), sample)
    answer = check_served(target.url(EDGE), [(hot, HOT_MESSAGE)] * 3)
    bench.inputs[target.name] = Digests(
        bench.folder / f"digests-{target.name}", hit, hot, cold_digests, bench.args.cold_rate
    )
    print(
        f"  {target.name}: {len(cold_digests) + len(hit) + 1} messages stored in "
        f"{time.monotonic() - started:.1f} s",
        flush=True,
    )
    return answer


class Comparison:
    """The alternating runs, the spans each of make run's runs exported, and what make run
    used while the others ran."""

    def __init__(self, bench: Bench, ours: ShippedTarget, others: list[Measured]) -> None:
        self.bench = bench
        self.ours = ours
        self.others = others
        self.tally = SpanTally(bench.sink)
        self.last: Result | None = None  # make run's latest run, which the spans belong to
        self.ended = time.monotonic()  # when make run last served a request of ours
        self.idle = {"cpu_seconds": 0.0, "seconds": 0.0}

    def attribute_spans(self) -> None:
        """The spans received since make run's previous run began are that run's (the
        others export none), once the app had the time to export them all."""
        time.sleep(max(0.0, EXPORT_WAIT - (time.monotonic() - self.ended)))
        spans, server_spans = self.tally.take()
        if self.last is not None:
            self.last.spans = (self.last.spans or 0) + spans
            self.last.server_spans = (self.last.server_spans or 0) + server_spans

    def run(self, target: Measured, scenario: str) -> None:
        """One run; for another target, make run's own CPU meanwhile."""
        if target is self.ours:
            self.attribute_spans()
            self.last = self.bench.run(target, EDGE, scenario, self.bench.args.seconds)
            self.ended = time.monotonic()
            return
        before, started = self.ours.cpu_seconds(), time.monotonic()
        self.bench.run(target, EDGE, scenario, self.bench.args.seconds)
        after = self.ours.cpu_seconds()
        self.idle["seconds"] += time.monotonic() - started
        self.idle["cpu_seconds"] += sum(t - before.get(k, 0.0) for k, t in after.items())

    def repetitions(self, ceiling: Ceiling) -> None:
        """Every scenario, make run and the reference alternating; for hot, the ceiling."""
        reps = self.bench.args.reps
        for rep in range(reps):
            print(f"repetition {rep + 1} of {reps}", flush=True)
            order = [self.ours, *self.others]
            bare = ceiling.targets()
            if rep % 2:
                order.reverse()
                bare.reverse()
            for scenario in SCENARIOS:
                for target in order + (bare if scenario == "hot" else []):
                    self.run(target, scenario)
        self.attribute_spans()

    def idle_share(self) -> float:
        """CPU cores make run used while it served nothing (its monitoring, mostly)."""
        return round(self.idle["cpu_seconds"] / max(self.idle["seconds"], 1e-9), 4)


def trace_totals(results: list[Result]) -> dict[str, float | None]:
    """Spans and server spans over all of make run's runs, and the share of requests traced."""
    ours = [r for r in results if r.target == "ours" and r.spans is not None]
    sent = sum(r.requests + r.warmup_requests for r in ours)
    spans = sum(r.spans or 0 for r in ours)
    server = sum(r.server_spans or 0 for r in ours)
    return {
        "requests": sent,
        "spans": spans,
        "server_spans": server,
        "traced_share": round(server / sent, 4) if sent else None,
    }


def peer_signals(results: list[Result], spans: int, peer: Target) -> dict[str, int | str]:
    """What the instrumented peer's signals recorded over its comparison runs: spans, the
    requests its metrics counted, the JSON lines it logged (proof that each signal was on)."""
    mine = [r for r in results if r.target == "peer" and r.phase == "comparison"]
    sent = sum(r.requests + r.warmup_requests for r in mine)
    log = (peer.stack.log_dir / "app.log").read_text(errors="replace").splitlines()
    try:
        url = f"http://127.0.0.1:{peer.peer_metrics_port}/metrics"
        metrics = requests.get(url, timeout=60).text
    except requests.RequestException as e:  # reported, not the run's results lost
        return {"requests": sent, "spans": spans, "error": str(e)}
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("flask_http_request_total{")
    )
    return {
        "requests": sent,
        "spans": spans,
        "requests_counted_by_metrics": int(counted),
        "json_access_lines": sum(1 for line in log if line.startswith('{"message": "request"')),
    }


def shipped(
    bench: Bench, document: dict[str, Any], reference: ServerConfig, peer: ServerConfig
) -> None:
    """--mode shipped: make run, the reference, the instrumented peer and the ceiling, side by
    side; then the soak."""
    args = bench.args
    bench.phase = "comparison"
    cold = cold_messages(Digests.needed(args.cold_rate, args.seconds, args.warmup, args.reps))
    document["cold_messages_stored"] = len(cold)
    running: list[ShippedTarget | Target | Ceiling] = []
    try:
        print("starting make run as shipped, the reference, the peer and the ceiling", flush=True)
        ours = start_shipped(bench.scratch("make-run"), bench.sink.endpoint)
        running.append(ours)
        document["ours_server"] = ours.label
        ref = start("reference", reference, bench.scratch("reference"), {})
        running.append(ref)
        instrumented = start("peer", peer, bench.scratch("peer"), {}, bench.peer_sink.endpoint)
        running.append(instrumented)
        answer = Answer.of(seed(bench, ours, cold))
        other: Target | Ceiling  # make run's others here; in the soak, the ceiling too
        for other in (ref, instrumented):
            if seed(bench, other, cold).text != answer.body:
                print(f"  note: the {other.name}'s GET body differs from make run's", flush=True)
        ceiling = start_ceiling(bench.scratch("ceiling"), answer)
        running.append(ceiling)
        for bare in ceiling.targets():
            bench.inputs[bare.name] = bench.inputs[ours.name]  # the hot digest's path
        print(
            f"comparison: {ours.label}, reference ({reference.label}), peer ({peer.label})",
            flush=True,
        )
        peer_spans = bench.peer_sink.count
        comparison = Comparison(bench, ours, [ref, instrumented])
        comparison.repetitions(ceiling)
        document["make_run_idle_cpu_cores"] = comparison.idle_share()
        document["trace_totals"] = trace_totals(bench.results)
        time.sleep(EXPORT_WAIT)  # the peer's last spans
        document["peer_signals"] = peer_signals(
            bench.results, bench.peer_sink.count - peer_spans, instrumented
        )
        if args.soak_minutes:
            for other in (ceiling, ref, instrumented):
                other.stop()
                running.remove(other)
            document["soak"] = soak(bench, ours, comparison.tally)
    finally:
        for part in reversed(running):
            part.stop()


def soak(bench: Bench, ours: ShippedTarget, tally: SpanTally) -> dict[str, object]:
    """make run under mixed load; its gunicorn workers' memory every 30 s."""
    minutes = bench.args.soak_minutes
    print(f"soak: {minutes} minutes of mixed load on make run", flush=True)
    tally.take()
    spans = [0, 0]

    def sample() -> dict[str, float | list[float]]:
        got = tally.take()  # and forget them: a long soak must not keep every span
        spans[0] += got[0]
        spans[1] += got[1]
        return {"workers_mib": ours.worker_rss_mib(), **ours.rss_mib()}

    result = bench.soak(ours, minutes, sample)
    time.sleep(EXPORT_WAIT)
    got = tally.take()
    result.update(spans=spans[0] + got[0], server_spans=spans[1] + got[1])
    return result
