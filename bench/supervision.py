"""What `make run`'s supervision and logging cost per request: `make run` as shipped (on free
ports, the per-client rate limit lifted: one load generator is one address), wrk through the
TLS edge, and the CPU time each kind of process used, per request.

    python -m bench.supervision [--seconds 20] [--connections 32] [--scenario miss]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, cast

import psutil

from bench.measure import WRK_SCRIPT
from tests.make_run import MakeRun, make_run_env

# Which part of the stack a process is, by its program's name (the first that matches):
# make run's Python and finish scripts count as supervision, and a log service's shell
# (`/bin/sh ./run <component>/log`) with its log writers.
KINDS = (
    ("supervisor", ("s6-svscan", "s6-supervise")),
    ("log writers", ("s6-log", "sed", "run")),
    ("nginx", ("nginx",)),
    ("redis", ("redis-server",)),
    ("mtail", ("mtail",)),  # apart from the rest of monitoring: it reads a line per request
)
SUPERVISOR_MODULES = ("native.run", "native.finish")
APP_MODULES = ("service.serve", "gunicorn")
PARTS = ("supervisor", "log writers", "app", "nginx", "redis", "mtail", "monitoring")


def kind_from(name: str, cmdline: list[str]) -> str:
    """supervisor, log writers, app, nginx, redis, mtail or (the rest of) monitoring, from a
    process's name (as psutil gives it) and command line. Exact names:
    prometheus-nginx-exporter is monitoring."""
    for kind, names in KINDS:
        if name in names:
            return kind
    if name.startswith("python") or name == "gunicorn":
        if any(m in cmdline for m in SUPERVISOR_MODULES):
            return "supervisor"
        if any(m in arg for arg in cmdline for m in APP_MODULES):
            return "app"
    return "monitoring"


def kind_of(proc: psutil.Process) -> str:
    """The kind of a running process (see kind_from)."""
    return kind_from(proc.name(), proc.cmdline())


def cpu_seconds(run: MakeRun) -> dict[int, tuple[str, float]]:
    """pid -> (kind, user + system CPU seconds so far) for every process of the stack."""
    # Every descendant of make run: nginx's workers drop the environment that
    # run.processes() looks for.
    assert run.make is not None and run.make.process is not None
    found = {}
    for proc in psutil.Process(run.make.process.pid).children(recursive=True):
        try:
            times = proc.cpu_times()
            found[proc.pid] = (kind_of(proc), times.user + times.system)
        except psutil.NoSuchProcess:
            continue
    return found


def wrk(url: str, seconds: int, connections: int, scenario: str) -> dict[str, int]:
    """wrk's summary line (bench/wrk/api.lua prints one JSON line)."""
    out = subprocess.run(
        [
            *("wrk", "--threads", "1", "--connections", str(connections)),
            *("--duration", f"{seconds}s", "--script", str(WRK_SCRIPT)),
            *(url, "--", scenario),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return cast(
        "dict[str, int]",
        json.loads(next(line for line in out.splitlines() if line.startswith("{"))),
    )


def measure(seconds: int, connections: int, scenario: str) -> dict[str, Any]:
    """Start make run, load it, and return requests, rps and CPU µs per request by kind."""
    state = Path(tempfile.mkdtemp(prefix="bench-supervision-")) / "state"
    run = MakeRun(
        state_dir=state, env=make_run_env(state, RATE_LIMIT_RPS="100000", RATE_LIMIT_BURST="100000")
    )
    try:
        run.start()
        wrk(run.url, 3, connections, scenario)  # warm up
        before = cpu_seconds(run)
        summary = wrk(run.url, seconds, connections, scenario)
        after = cpu_seconds(run)
    finally:
        run.kill()
    used: dict[str, float] = defaultdict(float)
    for pid, (kind, total) in after.items():
        used[kind] += total - before.get(pid, (kind, 0.0))[1]
    requests = summary["requests"]
    return {
        "scenario": scenario,
        "requests": requests,
        "rps": requests / seconds,
        "errors": {
            k: summary[k]
            for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "status_errors")
        },
        "cpu_us_per_request": {k: round(v / requests * 1e6, 2) for k, v in sorted(used.items())},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.supervision", description=__doc__)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--connections", type=int, default=32)
    # miss: GETs of unknown digests (404s, the app and Redis on every request); post: new
    # messages. "status_errors" counts the 404s of a miss run: wrk calls them errors.
    p.add_argument("--scenario", default="miss", choices=("miss", "post"))
    args = p.parse_args(argv)
    result = measure(args.seconds, args.connections, args.scenario)
    print(json.dumps(result, indent=2))
    total = sum(result["cpu_us_per_request"].values())
    for kind, us in result["cpu_us_per_request"].items():
        print(f"{kind:<12} {us:>9.2f} µs/request  {us / total:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
