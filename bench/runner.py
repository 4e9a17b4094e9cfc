"""What both modes of `make bench` do: start harness targets in a scratch folder, measure
runs and keep every result, sweep gunicorn models, and soak a target under mixed load."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.digests import Digests, hit_messages
from bench.measure import WRK_SCRIPT, Inputs, Load, Measured, Result, measure
from bench.targets import EDGE, ServerConfig, Target, seed, start
from tests.otlp_receiver import Receiver

SOAK_SAMPLE_SECONDS = 30


class Bench:
    """Starts targets in a scratch folder, seeds them and keeps every result."""

    def __init__(
        self, args: argparse.Namespace, folder: Path, sink: Receiver, peer_sink: Receiver
    ) -> None:
        self.args = args
        self.folder = folder
        self.sink = sink  # ours' traces
        self.peer_sink = peer_sink  # the instrumented peer's
        self.load = Load(threads=args.wrk_threads, connections=args.connections)
        self.inputs: dict[str, Inputs] = {}  # by target name
        self.results: list[Result] = []
        self.phase = ""
        self.started = 0

    def scratch(self, name: str) -> Path:
        """A new folder for a target."""
        self.started += 1
        return self.folder / f"{self.started}-{name}"

    def start(self, name: str, server: ServerConfig, env: dict[str, str] | None = None) -> Target:
        """Start a harness target and store the hit messages in it through its API."""
        env = env if env is not None else self.traced_env(name)
        folder = self.scratch(name)
        target = start(name, server, folder, env, self.peer_sink.endpoint)
        try:
            self.inputs[name] = Digests(folder / "digests", seed(target, hit_messages()))
        except BaseException:
            target.stop()
            raise
        return target

    def traced_env(self, name: str) -> dict[str, str]:
        """The service exports its traces to the sink; the reference has none."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.sink.endpoint} if name == "ours" else {}

    def run(self, target: Measured, via: str, scenario: str, seconds: float) -> Result:
        """Measure once and keep the result."""
        run_id = f"{time.time_ns()}"
        result = measure(
            target,
            via,
            scenario,
            seconds,
            self.args.warmup,
            self.load,
            self.inputs[target.name],
            run_id,
        )
        result.phase = self.phase
        self.results.append(result)
        flag = "" if result.valid else f"  INVALID {result.errors}"
        cpu = sum(result.cpu_us_per_request.values())
        print(
            f"  {target.name:13} {target.label:29} {via:6} {scenario:5} "
            f"{result.rps:9.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
            f"  {cpu:6.0f} µs CPU/req{flag}",
            flush=True,
        )
        return result

    def quick_score(self, name: str, server: ServerConfig) -> float:
        """Geometric mean of POST and GET-hit throughput through the edge, short runs."""
        target = self.start(name, server)
        try:
            rps = [self.run(target, EDGE, s, self.args.sweep_seconds).rps for s in ("post", "hit")]
        finally:
            target.stop()
        return statistics.geometric_mean(rps)

    def sweep(
        self, name: str, candidates: list[ServerConfig]
    ) -> tuple[ServerConfig, list[dict[str, str | float]]]:
        """Each candidate's score; the best one."""
        scores = [(c, self.quick_score(name, c)) for c in candidates]
        best = max(scores, key=lambda s: s[1])[0]
        return best, [{"server": c.label, "score_rps": round(s, 1)} for c, s in scores]

    def soak(
        self, target: Measured, minutes: float, sample: Callable[[], Mapping[str, object]]
    ) -> dict[str, object]:
        """Mixed load (POST, GET hit, GET miss in turn) for a while; sample() every 30 s."""
        samples = []
        digests = self.inputs[target.name].file_for("mix", minutes * 60)
        argv = [
            "wrk",
            f"--threads={self.load.threads}",
            f"--connections={self.load.connections}",
            f"--duration={round(minutes * 60)}s",
            f"--script={WRK_SCRIPT}",
            target.url(EDGE),
            "--",
            "mix",
            str(digests),
            f"soak-{time.time_ns()}",
            str(self.load.threads),
        ]
        started = time.monotonic()
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as wrk:
            try:
                while wrk.poll() is None:
                    samples.append(
                        {"minute": round((time.monotonic() - started) / 60, 2), **sample()}
                    )
                    print(f"  soak {samples[-1]}", flush=True)
                    time.sleep(min(SOAK_SAMPLE_SECONDS, minutes * 60 / 4))
            finally:
                if wrk.poll() is None:
                    wrk.kill()
            summary = wrk.stdout.read().strip().splitlines()[-1] if wrk.stdout else ""
        return {"server": target.label, "minutes": minutes, "samples": samples, "wrk": summary}
