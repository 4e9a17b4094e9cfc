"""`make run` and its companions: the whole native stack under s6 supervision.

    python -m native.run            start it in the foreground; Ctrl-C or SIGTERM stops it
    python -m native.run status     each component's state, pid, uptime and restarts
    python -m native.run stop       stop a stack started from another terminal
    python -m native.run restart C  start component C again (after the supervisor gave up)

A component that dies is restarted by its supervisor (native/supervise.py) while the rest
keeps serving; the console shows what starts, dies, restarts or is given up, and each
component's warnings and errors. Every log line goes to .state/logs/<component>/current.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from native import supervise
from native.console import say
from native.edge_cache import own_edge_cache_dir, remove_edge_cache
from native.ports import bindable
from native.processes import Process, prepare_stack
from native.redis_files import redis_data_dir
from native.settings import StackConfig
from native.supervise import scan_dir

READY_TIMEOUT = 120  # seconds for every component to answer after a start
STOP_TIMEOUT = 60  # seconds for the whole stack to stop
# Left in the scan folder by `make stop` before it stops the supervisor, so that the make run
# in the foreground tells a requested stop (exit 0) from a supervisor that ended by itself
# (a failure). The next make run starts from a fresh scan folder, without it.
STOP_REQUESTED = ".stop-requested"


class AlreadyRunning(Exception):
    """Another make run, or what is left of one, holds this stack's state folder or ports."""


@contextmanager
def exclusive(cfg: StackConfig) -> Iterator[IO[str]]:
    """Hold the state folder's lock for as long as this make run lives."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.state_dir / "make-run.lock"
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            raise AlreadyRunning(
                f"already running for {cfg.state_dir} (pid {pid}). Stop it with "
                "Ctrl-C in its terminal or `make stop`; `make status` shows its components."
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield lock


def busy_ports(cfg: StackConfig, procs: list[Process]) -> list[str]:
    """The stack's ports that something else already listens on."""
    ports = {f"{name.upper()}_PORT": port for name, port in cfg.ports.items()}
    ports.update({f"{p.name} port": p.port for p in procs if p.port})
    busy = []
    for label, port in sorted(ports.items(), key=lambda item: item[1]):
        if not bindable(port, reuse_address=True):
            busy.append(f"{port} ({label})")
    return busy


def check_free(cfg: StackConfig, procs: list[Process]) -> None:
    """Refuse to start over a stack that is still running, with a clear reason."""
    if supervise.supervisor_running(scan_dir(cfg)):
        raise AlreadyRunning(
            f"a stack started by an earlier make run still runs from {cfg.state_dir} "
            "(its make run was killed): `make stop` stops it."
        )
    busy = sorted(set(busy_ports(cfg, procs)))
    if busy:
        raise AlreadyRunning(
            f"these ports are already in use: {', '.join(busy)}. Is another make run (or "
            "another program) using them? Stop it, or choose other ports with <NAME>_PORT."
        )


def wait_until_ready(procs: list[Process], supervisor: subprocess.Popen[bytes]) -> bool:
    """Say each component is ready as it starts answering; False if not all did in time
    (or the supervisor ended)."""
    pending = list(procs)

    def still_pending() -> list[Process]:
        for proc in [p for p in pending if supervise.is_ready(p)]:
            say(proc.name, "ready")
            pending.remove(proc)
        return pending if supervisor.poll() is None else []

    try:
        Retrying(
            stop=stop_after_delay(READY_TIMEOUT), wait=wait_fixed(0.2), retry=retry_if_result(bool)
        )(still_pending)
    except RetryError:
        names = ", ".join(p.name for p in pending)
        say("make run", f"not ready after {READY_TIMEOUT} s: {names} (see .state/logs/)")
        return False
    return not pending


def run_job(cfg: StackConfig, job: Process) -> bool:
    """Run a one-shot job to its end, its output in its log; its failure stops nothing."""
    folder = supervise.log_dir(cfg, job.name)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "current"
    say(job.name, "job started")
    with log.open("ab") as out:
        done = subprocess.run(
            job.argv, env=job.env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode == 0:
        say(job.name, "job done")
        return True
    say(
        job.name,
        f"job FAILED (exit code {done.returncode}); see {log}. The other components keep running.",
    )
    return False


def describe_topology(cfg: StackConfig) -> str:
    """Where this topology keeps its messages: each has its own folders."""
    here = redis_data_dir(cfg).parent if cfg.redis_topology == "cluster" else redis_data_dir(cfg)
    other = "cluster" if cfg.redis_topology == "single" else "single"
    return (
        f"Redis topology {cfg.redis_topology}: messages in {here}. The {other} topology "
        "keeps its own, untouched, for when you switch back."
    )


def start(cfg: StackConfig) -> int:
    """make run: start the stack, say when it serves, and stop it all when told to."""
    try:
        with exclusive(cfg):
            procs = prepare_stack(cfg)
            check_free(cfg, procs)
            own_edge_cache_dir(cfg)  # made here, as removed at the end of serve()
            return serve(cfg, procs)
    except AlreadyRunning as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1


def serve(cfg: StackConfig, procs: list[Process]) -> int:
    services = [p for p in procs if not p.job]
    scan = supervise.write_services(cfg, services)
    print(describe_topology(cfg), flush=True)
    supervisor = supervise.start_supervisor(scan, cfg.child_env)
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        if not stopping:
            say("make run", f"{signal.Signals(signum).name}: stopping every component")
            supervise.stop_supervisor(scan)
        stopping.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    if wait_until_ready(services, supervisor) and not stopping:
        for job in (p for p in procs if p.job):
            run_job(cfg, job)
        print(
            f"Serving https://localhost:{cfg.edge_port}/messages (state in {cfg.state_dir}, "
            f"logs in {cfg.state_dir / 'logs'}); `make status` shows the components; "
            "Ctrl-C stops everything.",
            flush=True,
        )
    try:
        supervisor.wait(timeout=None)
    finally:
        if supervisor.poll() is None:  # make run itself failed: leave nothing behind
            supervise.stop_supervisor(scan)
            supervisor.wait(timeout=STOP_TIMEOUT)
    remove_edge_cache(cfg)
    if stopping:
        say("make run", "stopped")
        return 0
    if (scan / STOP_REQUESTED).exists():
        say("make run", "stopped by make stop")
        return 0
    say("make run", f"the supervisor (s6-svscan) ended by itself ({supervisor.returncode})")
    return 1


def print_status(cfg: StackConfig) -> int:
    """make status."""
    rows = supervise.statuses(cfg)
    if not rows or not supervise.supervisor_running(scan_dir(cfg)):
        print(f"No stack is running from {cfg.state_dir}.")
        return 1 if rows else 0
    print(f"{'component':<20} {'state':<12} {'pid':>8} {'for':>10} {'restarts':>9}")
    for row in rows:
        pid = str(row.pid) if row.pid else "-"
        print(
            f"{row.name:<20} {row.state:<12} {pid:>8} {duration(row.seconds):>10} {row.restarts:>9}"
        )
    return 0


def duration(seconds: int) -> str:
    """3h 02m, 5m 07s, 12s."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def stop_from_elsewhere(cfg: StackConfig) -> int:
    """make stop: stop the stack a make run in another terminal (or a killed one) started."""
    scan = scan_dir(cfg)
    if not supervise.supervisor_running(scan):
        print(f"No stack is running from {cfg.state_dir}.")
        return 0
    (scan / STOP_REQUESTED).touch()  # before the stop: make run reads it once s6 has ended
    supervise.stop_supervisor(scan)
    try:
        Retrying(
            stop=stop_after_delay(STOP_TIMEOUT), wait=wait_fixed(0.2), retry=retry_if_result(bool)
        )(supervise.supervisor_running, scan)
    except RetryError:
        print(f"The stack did not stop within {STOP_TIMEOUT} s.", file=sys.stderr)
        return 1
    remove_edge_cache(cfg)  # its make run was killed before it could
    print("Stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m native.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", nargs="?", default="start", choices=("start", "status", "stop", "restart")
    )
    parser.add_argument("component", nargs="?", help="for restart: which one")
    args = parser.parse_args(argv)
    cfg = StackConfig.from_env()
    if args.command == "status":
        return print_status(cfg)
    if args.command == "stop":
        return stop_from_elsewhere(cfg)
    if args.command == "restart":
        if not args.component:
            parser.error("restart needs a component name (make restart C=<name>)")
        try:
            supervise.restart(cfg, args.component)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    return start(cfg)


if __name__ == "__main__":
    sys.exit(main())
