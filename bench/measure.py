"""One measurement: wrk against a target for a while, with the CPU time and memory of each
part of the target's stack taken around it."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.targets import Target
from native.stack import ROOT

WRK_SCRIPT = ROOT / "bench" / "wrk" / "api.lua"
PARTS = ("app", "nginx", "redis")
MIB = 1024 * 1024
# What each scenario's requests should answer; anything else makes the run invalid.
EXPECTED_STATUS = {"post": 201, "hit": 200, "miss": 404, "plain": 200}


@dataclass(frozen=True)
class Load:
    """How hard wrk pushes: its threads and open connections."""

    threads: int = 1
    connections: int = 32


@dataclass
class Result:
    """One run of one scenario against one target."""

    target: str
    server: str
    via: str
    scenario: str
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    cpu_us_per_request: dict[str, float]  # by part: app, nginx, redis
    rss_mib: dict[str, float]  # app workers' largest and total, nginx, redis
    phase: str = ""  # sweep, scaling, comparison

    @property
    def valid(self) -> bool:
        """No socket errors, timeouts or unexpected statuses."""
        return not any(self.errors.values())

    def to_json(self) -> dict:
        """A plain dict for the results file."""
        return {**asdict(self), "valid": self.valid}


def run_wrk(url: str, mode: str, seconds: float, load: Load, *args: str) -> dict:
    """wrk's summary of one run (see bench/wrk/api.lua)."""
    argv = ["wrk", f"--threads={load.threads}", f"--connections={load.connections}",
            f"--duration={max(1, round(seconds))}s", "--timeout=10s",
            f"--script={WRK_SCRIPT}", url, "--", mode, *args]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_seconds(target: Target) -> dict[str, float]:
    """CPU time used so far by each part's processes (children that exited not counted)."""
    used = {}
    for part in PARTS:
        total = 0.0
        for proc in target.processes(part):
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        used[part] = total
    return used


def rss_mib(target: Target) -> dict[str, float]:
    """Resident memory: the largest app worker, all of the app, nginx and Redis."""

    def rss(procs: list[psutil.Process]) -> list[float]:
        return [p.memory_info().rss / MIB for p in procs if p.is_running()]

    workers = rss(target.workers())
    return {
        "app_worker_max": round(max(workers), 1),
        "app_total": round(sum(rss(target.processes("app"))), 1),
        "nginx": round(sum(rss(target.processes("nginx"))), 1),
        "redis": round(sum(rss(target.processes("redis"))), 1),
    }


def measure(target: Target, via: str, scenario: str, seconds: float, warmup: float,
            load: Load, digests_file: Path, run_id: str) -> Result:  # fmt: skip
    """Warm up, then measure one scenario (post, hit, miss or plain) against the target."""
    url = target.url(via)
    if scenario == "plain":
        url += "/edge-healthz"  # nginx answers itself: the TLS edge's ceiling
    args = (str(digests_file), run_id)
    if warmup:
        run_wrk(url, scenario, warmup, load, str(digests_file), f"{run_id}-warmup")
    before = cpu_seconds(target)
    summary = run_wrk(url, scenario, seconds, load, *args)
    after = cpu_seconds(target)
    n = max(1, summary["requests"])
    status_errors = summary["status_errors"]  # wrk counts every status of 400 and above
    unexpected = n - status_errors if EXPECTED_STATUS[scenario] >= 400 else status_errors
    return Result(
        target=target.name,
        server=target.server.label,
        via=via,
        scenario=scenario,
        seconds=summary["duration_us"] / 1e6,
        requests=summary["requests"],
        rps=round(summary["requests"] / (summary["duration_us"] / 1e6), 1),
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        max_ms=summary["max_us"] / 1000,
        errors={
            "unexpected_status": unexpected,
            "connect": summary["connect_errors"],
            "read": summary["read_errors"],
            "write": summary["write_errors"],
            "timeout": summary["timeouts"],
        },
        cpu_us_per_request={p: round((after[p] - before[p]) / n * 1e6, 1) for p in PARTS},
        rss_mib=rss_mib(target),
    )
