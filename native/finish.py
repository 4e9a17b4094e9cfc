"""What `make run`'s supervisor does each time a component's process ends: the `finish`
program of every s6 service (native/supervise.py writes the services).

s6-supervise runs it in the service's folder as `finish EXIT_CODE SIGNAL NAME` and restarts
the component when it returns, unless it exits 125 ("permanent failure"). It:
- kills what the dead process left in its process group (gunicorn's or nginx's workers would
  otherwise keep the port, and the new process could not listen on it);
- if the stop was asked for (make run stopping), says so and does nothing more;
- else counts the death, waits a little longer after each of a run of deaths (backoff), and
  gives up on a component that died too often in a short time;
- says what happened on make run's console (its standard error) and in the node exporter's
  textfile folder, as metrics (supervisor_component_restarts_total, ..._given_up).

    python -m native.finish --limit N --window SECONDS --textfile DIR EXIT_CODE SIGNAL NAME
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from native.console import say

GIVE_UP = 125  # s6-supervise: do not restart
BACKOFF_CAP = 4.0  # seconds; s6-supervise's timeout-finish (native/supervise.py) is above it

# Files in the service folder's data/ (s6 leaves files it does not know alone).
PID_FILE = "pid"  # written by the run script: the process, and its process group
DEATHS_FILE = "deaths"  # times of recent deaths, one per line
RESTARTS_FILE = "restarts"  # deaths that led to a restart since make run started
GIVEN_UP_FILE = "given-up"  # present once the supervisor gave up on the component


def kill_leftovers(data: Path) -> None:
    """SIGKILL whatever is left of the dead process's group (s6 starts each component as a
    session and group leader, so the group is the component's own)."""
    try:
        pgid = int((data / PID_FILE).read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def wanted_up(service: Path) -> bool:
    """Whether the supervisor still means to run the component (not a requested stop)."""
    out = subprocess.run(
        ["s6-svstat", "-o", "wantedup", str(service)], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() != "false"


def recent_deaths(data: Path, now: float, window: float) -> int:
    """Record this death; return how many happened within the last `window` seconds."""
    path = data / DEATHS_FILE
    try:
        times = [float(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        times = []
    times = [t for t in times if now - t < window] + [now]
    path.write_text("".join(f"{t}\n" for t in times))
    return len(times)


def restarts_so_far(data: Path) -> int:
    """How many times the component was restarted since make run started."""
    try:
        return int((data / RESTARTS_FILE).read_text())
    except (OSError, ValueError):
        return 0


def count_restart(data: Path) -> int:
    """Add one to the component's restart count; return it."""
    restarts = restarts_so_far(data) + 1
    (data / RESTARTS_FILE).write_text(f"{restarts}\n")
    return restarts


def backoff(deaths: int) -> float:
    """Seconds to wait before the next start: none after a first death, then 1, 2, 4 s."""
    return 0.0 if deaths <= 1 else min(2.0 ** (deaths - 2), BACKOFF_CAP)


def write_metrics(textfile: Path, name: str, restarts: int, given_up: bool) -> None:
    """The component's supervision metrics, for the node exporter's textfile collector
    (written to a temporary file, then renamed, so that a scrape never reads half)."""
    label = f'{{component="{name}"}}'
    text = (
        "# HELP supervisor_component_restarts_total Times make run's supervisor restarted "
        "the component after it died.\n"
        "# TYPE supervisor_component_restarts_total counter\n"
        f"supervisor_component_restarts_total{label} {restarts}\n"
        "# HELP supervisor_component_given_up 1 when the supervisor stopped restarting the "
        "component (it died too often).\n"
        "# TYPE supervisor_component_given_up gauge\n"
        f"supervisor_component_given_up{label} {int(given_up)}\n"
    )
    write_textfile(textfile / f"supervisor-{name}.prom", text)


def write_reload_metric(textfile: Path, name: str, refused: bool) -> None:
    """Whether `make reload` last refused the component's new config or code (it then runs
    the previous one), for the node exporter as above (native/reload.py writes it)."""
    text = (
        "# HELP supervisor_component_reload_refused 1 when make reload last refused the "
        "component's new config or code: it still runs the previous one.\n"
        "# TYPE supervisor_component_reload_refused gauge\n"
        f'supervisor_component_reload_refused{{component="{name}"}} {int(refused)}\n'
    )
    write_textfile(textfile / f"reload-{name}.prom", text)


def write_textfile(final: Path, text: str) -> None:
    """Written whole under another name, then renamed: the node exporter never reads half."""
    partial = final.with_suffix(".prom.tmp")
    partial.write_text(text)
    partial.rename(final)


def cause(exit_code: int, signal_number: int) -> str:
    """How the process ended, in words."""
    if exit_code == 256:  # s6-supervise's way of saying "killed by a signal"
        return f"killed by {signal.Signals(signal_number).name}"
    return f"exit code {exit_code}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m native.finish", description=__doc__)
    p.add_argument("--limit", type=int, required=True, help="deaths within --window to give up")
    p.add_argument("--window", type=float, required=True)
    p.add_argument("--textfile", type=Path, required=True)
    p.add_argument("exit_code", type=int)
    p.add_argument("signal", type=int)
    p.add_argument("name")
    args = p.parse_args(argv)
    service = Path.cwd()
    data = service / "data"
    kill_leftovers(data)
    how = cause(args.exit_code, args.signal)
    if not wanted_up(service):
        say(args.name, f"stopped ({how})")
        return 0
    deaths = recent_deaths(data, time.time(), args.window)
    if deaths >= args.limit:
        (data / GIVEN_UP_FILE).touch()
        write_metrics(args.textfile, args.name, restarts_so_far(data), given_up=True)
        say(
            args.name,
            f"{how}; died {deaths} times within {args.window:g} s: GIVEN UP, not "
            f"restarting (see its log; `make restart C={args.name}` tries again)",
        )
        return GIVE_UP
    restarts = count_restart(data)
    write_metrics(args.textfile, args.name, restarts, given_up=False)
    delay = backoff(deaths)
    say(args.name, f"{how}; restart {restarts}" + (f" in {delay:g} s" if delay else " now"))
    time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
