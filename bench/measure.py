"""One measurement: wrk against a target for a while, with the CPU time and memory of each
part of the target's stack taken around it."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, cast

import psutil

from native.settings import ROOT

WRK_SCRIPT = ROOT / "bench" / "wrk" / "api.lua"
MIB = 1024 * 1024
# What each scenario's requests should answer; anything else makes the run invalid.
EXPECTED_STATUS = {
    "post": 201,
    "hit": 200,
    "hot": 200,
    "cold": 200,
    "miss": 404,
    "miss1": 404,
    "plain": 200,
}
# (part, pid) -> CPU seconds (user + system) the process has used so far.
CpuTimes = dict[tuple[str, int], float]


class Measured(Protocol):
    """What a measurement needs of a target (bench/targets.py, shipped.py, ceiling.py)."""

    name: str

    @property
    def label(self) -> str: ...  # its process model, e.g. "sync 3"

    @property
    def parts(self) -> tuple[str, ...]: ...  # what its CPU time is reported by

    def url(self, via: str) -> str: ...

    def cpu_seconds(self) -> CpuTimes: ...

    def rss_mib(self) -> dict[str, float]: ...


class Inputs(Protocol):
    """The digests file each wrk run reads (bench/digests.py)."""

    def file_for(self, scenario: str, seconds: float) -> Path: ...


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
    cpu_us_per_request: dict[str, float]  # by part: app, nginx, redis (and make run's kinds)
    rss_mib: dict[str, float]  # app workers' largest and total, nginx, redis
    phase: str = ""  # sweep, scaling, comparison
    warmup_requests: int = 0
    # Spans the trace sink received from this run and its warm-up (make run only).
    spans: int | None = None
    server_spans: int | None = None

    @property
    def valid(self) -> bool:
        """No socket errors, timeouts or unexpected statuses."""
        return not any(self.errors.values())

    def traces(self) -> dict[str, float]:
        """Spans and traced requests (server spans) per second, and the traced share."""
        if self.spans is None or self.server_spans is None:
            return {}
        sent = max(1, self.requests + self.warmup_requests)
        return {
            "spans_per_s": round(self.spans / sent * self.rps, 1),
            "traced_rps": round(self.server_spans / sent * self.rps, 1),
            "traced_share": round(self.server_spans / sent, 4),
        }

    def to_json(self) -> dict[str, object]:
        """A plain dict for the results file."""
        return {**asdict(self), "valid": self.valid, **self.traces()}


def run_wrk(url: str, mode: str, seconds: float, load: Load, *args: str) -> dict[str, int]:
    """wrk's summary of one run (see bench/wrk/api.lua)."""
    argv = [
        "wrk",
        f"--threads={load.threads}",
        f"--connections={load.connections}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=10s",
        f"--script={WRK_SCRIPT}",
        url,
        "--",
        mode,
        *args,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return cast("dict[str, int]", json.loads(out.strip().splitlines()[-1]))  # api.lua prints ints


def wrk_args(inputs: Inputs, scenario: str, seconds: float, run_id: str, load: Load) -> list[str]:
    """The script's arguments after the mode: digests file, run id, wrk's threads."""
    return [str(inputs.file_for(scenario, seconds)), run_id, str(load.threads)]


def cpu_used(before: CpuTimes, after: CpuTimes, parts: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds each part used in between (processes that exited in between: not counted;
    processes that started in between: all they used)."""
    used: dict[str, float] = defaultdict(float, dict.fromkeys(parts, 0.0))
    for (part, pid), total in after.items():
        used[part] += total - before.get((part, pid), 0.0)
    return dict(used)


def measure(
    target: Measured,
    via: str,
    scenario: str,
    seconds: float,
    warmup: float,
    load: Load,
    inputs: Inputs,
    run_id: str,
) -> Result:
    """Warm up, then measure one scenario (post, hit, hot, cold, miss, miss1 or plain)."""
    url = target.url(via)
    if scenario == "plain":
        url += "/edge-healthz"  # nginx answers itself: the TLS edge's ceiling
    warmed = 0
    if warmup:
        args = wrk_args(inputs, scenario, warmup, f"{run_id}-warmup", load)
        warmed = run_wrk(url, scenario, warmup, load, *args)["requests"]
    args = wrk_args(inputs, scenario, seconds, run_id, load)
    before = target.cpu_seconds()
    summary = run_wrk(url, scenario, seconds, load, *args)
    after = target.cpu_seconds()
    n = max(1, summary["requests"])
    status_errors = summary["status_errors"]  # wrk counts every status of 400 and above
    unexpected = n - status_errors if EXPECTED_STATUS[scenario] >= 400 else status_errors
    used = cpu_used(before, after, target.parts)
    return Result(
        target=target.name,
        server=target.label,
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
            "digests_exhausted": summary.get("exhausted", 0),  # cold: raise --cold-rate
        },
        cpu_us_per_request={p: round(s / n * 1e6, 1) for p, s in used.items()},
        rss_mib=target.rss_mib(),
        warmup_requests=warmed,
    )


def cpu_times(procs: Iterable[tuple[str, psutil.Process]]) -> CpuTimes:
    """(part, pid) -> CPU seconds so far, for the given (part, process) pairs still running."""
    found = {}
    for part, proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        found[(part, proc.pid)] = t.user + t.system
    return found


def rss(procs: Iterable[psutil.Process]) -> list[float]:
    """Resident MiB of each of the processes still running."""
    out = []
    for proc in procs:
        try:
            out.append(proc.memory_info().rss / MIB)
        except psutil.NoSuchProcess:
            continue
    return out
