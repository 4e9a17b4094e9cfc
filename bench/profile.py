"""`make profile` (python -m bench.profile): where a worker of the service spends its time.

Starts the service with one worker and everything on, loads it through the TLS edge with
wrk, and samples the worker with py-spy. Writes a flame graph (SVG) and prints the functions
that hold the most samples, inclusive, by file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench.measure import Load, run_wrk
from bench.targets import EDGE, ServerConfig, seed, start
from native.settings import ROOT
from tests.otlp_receiver import start_receiver

# In the venv beside this Python, whether or not the venv is on PATH.
PY_SPY = str(Path(sys.executable).parent / "py-spy")
SEED = [f"profile seed {i}" for i in range(200)]


# Which part of the stack a sample's time belongs to: the innermost frame that names one.
COMPONENTS = [
    ("tracing (OpenTelemetry)", ("/opentelemetry/",)),
    (
        "metrics (prometheus)",
        ("/prometheus_client/", "/prometheus_flask_exporter/", "/service/metrics.py"),
    ),
    ("logging", ("/logging/", "/pythonjsonlogger/", "/service/logs.py")),
    ("request id", ("/service/request_id.py", "/uuid.py")),
    ("redis client", ("/redis/",)),
    ("the service's own code", ("/service/",)),
    ("Flask and Werkzeug", ("/flask/", "/werkzeug/")),
    ("gunicorn", ("/gunicorn/",)),
]


def component(stack: list[str]) -> str:
    """The component a sampled stack (outermost frame first) is spending its time in."""
    for frame in reversed(stack):
        for name, markers in COMPONENTS:
            if any(m in frame for m in markers):
                return name
    return "other"


def by_component(collapsed: Path) -> list[tuple[float, str]]:
    """Share of samples per component, largest first."""
    counts: Counter[str] = Counter()
    for stack, n in samples(collapsed):
        counts[component(stack)] += n
    total = sum(counts.values())
    return [(n / total, name) for name, n in counts.most_common()]


def samples(collapsed: Path) -> list[tuple[list[str], int]]:
    """py-spy's collapsed stacks: (frames, outermost first; number of samples)."""
    out = []
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def top_functions(collapsed: Path, limit: int) -> list[tuple[float, str]]:
    """Share of samples in which each function is on the stack (inclusive), largest first."""
    inclusive: Counter[str] = Counter()
    total = 0
    for stack, n in samples(collapsed):
        total += n
        for frame in set(stack):
            inclusive[frame] += n
    return [(n / total, frame) for frame, n in inclusive.most_common(limit)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--scenario", default="post", choices=["post", "hit", "miss", "mix"])
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--ours", default="sync 1", help="process model; profiled: the first worker")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    server = ServerConfig.parse(args.ours)
    sink = start_receiver(keep=False)  # a collector elsewhere: count only
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        target = start(
            "ours", server, Path(scratch) / "ours", {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
        )
        try:
            digests = Path(scratch) / "digests.txt"
            digests.write_text("\n".join(seed(target, SEED)) + "\n")
            worker = target.workers()[0].pid
            collapsed = args.out / f"profile-{args.scenario}.txt"
            svg = args.out / f"profile-{args.scenario}.svg"
            load = threading.Thread(
                target=run_wrk,
                args=(target.url(EDGE), args.scenario, args.seconds + 4, Load(), str(digests), "p"),
            )
            load.start()
            # --gil: only samples holding the GIL, i.e. Python running, not waiting.
            for fmt, out in (("raw", collapsed), ("flamegraph", svg)):
                record = [
                    *(PY_SPY, "record", "--pid", str(worker), "--rate", "250"),
                    *("--duration", str(args.seconds // 2), "--format", fmt),
                    *("--full-filenames", "--output", str(out), "--nonblocking", "--gil"),
                ]
                subprocess.run(record, check=True, capture_output=True)
            load.join()
        finally:
            target.stop()
            sink.close()
    for share, frame in top_functions(collapsed, args.top):
        print(f"{share:6.1%}  {frame}")
    print("\nby component (innermost frame):")
    for share, name in by_component(collapsed):
        print(f"{share:6.1%}  {name}")
    print(f"\nflame graph: {svg}; stacks: {collapsed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
