"""`make run`'s supervision: each process of the native stack as an s6 service.

s6 (Debian's package: s6-svscan, s6-supervise, s6-log) is a small supervision suite written
in C. Each component gets a service folder under .state/supervise/ with:
- run: its command line and environment (native/processes.py's Process), as a session leader;
- finish: native/finish.py, run after each exit: restart with backoff, give up on a crash
  loop, lifecycle lines on the console, restart metrics for the node exporter;
- log/run: s6-log writing the component's output to .state/logs/<name>/current, rotated by
  size, and copying its warnings and errors to make run's console.
Nothing relays a log line through Python, and the supervisor does no work per request.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from native.finish import (
    DEATHS_FILE,
    GIVEN_UP_FILE,
    restarts_so_far,
    write_metrics,
    write_reload_metric,
)
from native.processes import Process, app_env, textfile_dir
from native.settings import ROOT, StackConfig, save_started_with
from service.config import ServerSettings

# Lines copied to make run's console: warnings and errors in each component's own format
# (Redis's "#", Go's logfmt, glog's W/E/F prefixes, Python's tracebacks).
CONSOLE_LINES = r" # |level=(warn|error)|^[WEF][0-9]{4} |^Traceback|[Ee]rror:"
# The app and nginx write a line per request: their patterns are anchored, so that an
# access line fails at its first characters (s6-log tries every line against them).
CONSOLE_LINES_OF = {
    "app": r'^(\{"level":"(WARNING|ERROR|CRITICAL)"|Traceback|[A-Za-z.]*Error)',
    "nginx": r"^([0-9/]{10} [0-9:]{8} |nginx: )\[(warn|error|crit|alert|emerg)\]",
}


def kind(name: str) -> str:
    """The kind of component: "app" for every app instance (app, app-2, ...), else the name."""
    return "app" if name.startswith("app-") else name


# What `make reload` reloads in place (native/reload.py), by kind.
RELOADABLE = ("app", "nginx", "prometheus", "alertmanager")


def reloadable(name: str) -> bool:
    """Whether `make reload` can reload this component in place."""
    return kind(name) in RELOADABLE


def console_lines(name: str) -> str:
    """The regular expression for a component's lines that also go to the console."""
    return CONSOLE_LINES_OF.get(kind(name), CONSOLE_LINES)


FINISH_TIMEOUT_MS = 10_000  # above native/finish.py's longest backoff
STOP_TIMEOUT_MS = 10_000  # a component still running this long after its stop signal: SIGKILL
ORDER_FILE = ".order"  # the components in start order (s6-svscan skips dot files)


def scan_dir(cfg: StackConfig) -> Path:
    """The folder s6-svscan watches: one service folder per component."""
    return cfg.state_dir / "supervise"


def log_dir(cfg: StackConfig, name: str) -> Path:
    """Where a component's log lives: `current`, and rotated files beside it."""
    return cfg.state_dir / "logs" / name


def _script(path: Path, lines: Iterable[str]) -> None:
    path.write_text("\n".join(["#!/bin/sh", *lines]) + "\n")
    path.chmod(0o700)  # the environment may hold a secret (the Redis exporter's password)


def stop_timeout_ms(proc: Process, cfg: StackConfig) -> int:
    """How long a component may take to stop once asked: gunicorn finishes its requests."""
    if kind(proc.name) == "app":
        return (ServerSettings.from_env(app_env(cfg)).graceful_timeout + 5) * 1000
    return STOP_TIMEOUT_MS


def write_service(cfg: StackConfig, proc: Process) -> Path:
    """The s6 service folder of one component."""
    folder = scan_dir(cfg) / proc.name
    (folder / "data").mkdir(parents=True)
    (folder / "log").mkdir()
    # The supervisor runs in the stack's environment (start_supervisor): the run script
    # exports only what the component's own adds or changes.
    own_env = {k: v for k, v in proc.env.items() if cfg.child_env.get(k) != v}
    generated = "# Written by native/supervise.py at each make run; edits here are lost."
    _script(
        folder / "run",
        [
            generated,
            f'echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) {proc.name}: starting (pid $$)" >&2',
            "echo $$ > data/pid  # also its process group: finish kills what it leaves behind",
            "exec 2>&1",
            f"cd {shlex.quote(str(ROOT))}",
            *[f"export {k}={shlex.quote(v)}" for k, v in sorted(own_env.items())],
            f"exec {shlex.join(proc.argv)}",
        ],
    )
    finish = [
        sys.executable,
        "-m",
        "native.finish",
        "--limit",
        str(cfg.restart_limit),
        "--window",
        str(cfg.restart_window),
        "--textfile",
        str(textfile_dir(cfg)),
    ]
    _script(
        folder / "finish",
        [
            generated,
            f'PYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.join(finish)} "$@"',
        ],
    )
    (folder / "timeout-finish").write_text(f"{FINISH_TIMEOUT_MS}\n")
    (folder / "timeout-kill").write_text(f"{stop_timeout_ms(proc, cfg)}\n")
    (folder / "down-signal").write_text(f"SIG{proc.stop_signal}\n")
    logs = log_dir(cfg, proc.name)
    logs.mkdir(parents=True, exist_ok=True)
    s6_log = [
        "s6-log",
        "-b",
        "--",
        f"n{cfg.log_files}",
        f"s{cfg.log_file_bytes}",
        str(logs),
        "-",
        f"+{console_lines(proc.name)}",
        "1",
    ]
    _script(
        folder / "log" / "run",
        [
            generated,
            f"# {proc.name}'s output to {logs}/current, rotated at {cfg.log_file_bytes} bytes,",
            f"# {cfg.log_files} files kept; its warnings and errors also to make run's console.",
            f"{shlex.join(s6_log)} | sed -u {shlex.quote(f's/^/{proc.name}: /')} >&2",
        ],
    )
    write_metrics(textfile_dir(cfg), proc.name, restarts=0, given_up=False)
    if reloadable(proc.name):  # a refusal of an earlier run's reload no longer holds
        write_reload_metric(textfile_dir(cfg), proc.name, refused=False)
    return folder


def write_services(cfg: StackConfig, procs: list[Process]) -> Path:
    """A fresh scan folder with a service for each long-running process."""
    scan = scan_dir(cfg)
    shutil.rmtree(scan, ignore_errors=True)  # what an earlier run left, control pipes included
    scan.mkdir(parents=True)
    for proc in procs:
        write_service(cfg, proc)
    (scan / ORDER_FILE).write_text("".join(f"{p.name}\n" for p in procs))
    save_started_with(cfg)  # for make reload (native/reload.py), which also logs here:
    log_dir(cfg, "reload").mkdir(parents=True, exist_ok=True)
    (log_dir(cfg, "reload") / "current").touch()
    return scan


def start_supervisor(scan: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """s6-svscan on the scan folder, in the stack's environment and a session of its own:
    Ctrl-C in make run's terminal reaches only make run, which stops the stack through the
    supervisor (were the signal to reach every component at once, the supervisor would
    restart them)."""
    return subprocess.Popen(["s6-svscan", str(scan)], env=dict(env), start_new_session=True)


def supervisor_running(scan: Path) -> bool:
    """Whether an s6-svscan watches this scan folder."""
    if not (scan / ".s6-svscan").exists():
        return False
    out = subprocess.run(["s6-svscanctl", "-z", str(scan)], capture_output=True, check=False)
    return out.returncode == 0


def stop_supervisor(scan: Path) -> None:
    """Bring every component down, then the supervisor (s6-svscanctl -t: loggers write
    their last lines before they exit)."""
    subprocess.run(["s6-svscanctl", "-t", str(scan)], capture_output=True, check=False)


def is_ready(proc: Process) -> bool:
    """The component answers: its port accepts connections, or its ready path says 200."""
    if proc.port is None:
        return True
    if proc.ready_path:
        url = f"http://127.0.0.1:{proc.port}{proc.ready_path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()  # all of it: an exporter logs an error for a cut scrape
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False
    try:
        with socket.create_connection(("127.0.0.1", proc.port), timeout=2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `make status`."""

    name: str
    state: str  # up, restarting, GIVEN UP, stopped, or "no supervisor"
    pid: int | None
    seconds: int  # in that state for
    restarts: int


def component_status(scan: Path, name: str) -> ComponentStatus:
    """What s6-svstat says of a component, with make run's restart count."""
    folder = scan / name
    out = subprocess.run(
        ["s6-svstat", "-o", "up,wantedup,pid,updownfor", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    data = folder / "data"
    restarts = restarts_so_far(data)
    if out.returncode != 0:
        return ComponentStatus(name, "no supervisor", None, 0, restarts)
    up, wanted, pid, seconds = out.stdout.split()
    if (data / GIVEN_UP_FILE).exists():
        state = "GIVEN UP"
    elif up == "true":
        state = "up"
    else:
        state = "restarting" if wanted == "true" else "stopped"
    return ComponentStatus(name, state, int(pid) if int(pid) > 0 else None, int(seconds), restarts)


def statuses(cfg: StackConfig) -> list[ComponentStatus]:
    """Every component's status, in start order; empty when nothing was started here."""
    scan = scan_dir(cfg)
    try:
        names = (scan / ORDER_FILE).read_text().split()
    except OSError:
        return []
    return [component_status(scan, name) for name in names]


def restart(cfg: StackConfig, name: str) -> None:
    """Start a component again, given up on or not, with a clean slate of recent deaths."""
    folder = scan_dir(cfg) / name
    if not (folder / "run").exists():
        raise ValueError(f"no component named {name!r} (make status lists them)")
    for stale in (DEATHS_FILE, GIVEN_UP_FILE):
        (folder / "data" / stale).unlink(missing_ok=True)
    up = component_status(scan_dir(cfg), name).state == "up"
    subprocess.run(["s6-svc", "-r" if up else "-u", str(folder)], check=True)
