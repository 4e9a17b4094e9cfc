"""`make reload`: the app, nginx, Prometheus and Alertmanager of a running `make run` take
their new code and config in place, without a failed request.

    python -m native.reload              every app instance, nginx, Alertmanager, Prometheus
    python -m native.reload COMPONENT    one of them (app, app-2, ..., nginx, prometheus,
                                         alertmanager)

Each config is rendered again from the shared files (native/configs.py), with the settings
make run started with (native/settings.py: started_with), into a candidate beside the one in
use, and checked by the tool of the program that will read it: `nginx -t`, `promtool check
config`, `amtool check-config`; for the app, gunicorn's own `--check-config` imports the new
code in a fresh process. Only then is the candidate put in place and the process sent SIGHUP
by its supervisor (`s6-svc -h`): nginx and gunicorn start new workers and let the old ones
finish their requests; Prometheus and Alertmanager load the file again.

Why check first: gunicorn's master stops altogether when its new workers cannot import the
app (gunicorn 27: arbiter.reap_workers halts on a worker's boot or load error), which would
turn a typo into an outage. A check that fails changes nothing: the old config or code keeps
serving, the reason is printed, the command exits 1, and
supervisor_component_reload_refused{component} is 1 (alert ComponentReloadRefused) until a
reload of that component succeeds. Then it waits until the process shows that it took the
change: new workers, or the reload's success timestamp moved.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from native import supervise
from native.configs import (
    alertmanager_config,
    nginx_config,
    prometheus_config,
    render_alertmanager,
    render_nginx,
    render_prometheus,
)
from native.console import say
from native.finish import write_reload_metric
from native.processes import app_env, textfile_dir
from native.settings import ROOT, StackConfig, started_with
from native.supervise import kind, log_dir, reloadable, scan_dir
from service.config import ServerSettings
from service.serve import CONFIG as GUNICORN_CONFIG

CHECK_TIMEOUT = 60  # seconds for one check (the app's imports the whole app)
CONFIRM_TIMEOUT = 30  # seconds for a process to show it took the new config
REASON_LINES = 8  # the last lines of a failed check's output: where the reason is


class Refused(Exception):
    """The new config or code did not pass its check, or the process did not take it."""


def last_lines(text: str) -> str:
    """The end of a tool's output, indented under make reload's line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(f"    {line}" for line in lines[-REASON_LINES:])


def run_check(argv: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    """A checking tool run from the repository, its output kept, for at most CHECK_TIMEOUT."""
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT,
        check=False,
    )  # fmt: skip


def check(label: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run a checking tool; Refused with the end of its output if it says no."""
    try:
        done = run_check(argv, env)
    except subprocess.TimeoutExpired:
        raise Refused(f"{label} did not finish within {CHECK_TIMEOUT} s") from None
    if done.returncode != 0:
        raise Refused(f"{label} failed:\n{last_lines(done.stdout + done.stderr)}")


def candidate(live: Path) -> Path:
    """Where the new config is rendered and checked, beside the one in use."""
    return live.with_name(live.name + ".new")


def until(what: Callable[[], bool], seconds: float) -> bool:
    """Whether what() became true within `seconds`, polled every 0.1 s."""
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def children(pid: int) -> set[int]:
    """A master's child processes (its workers)."""
    try:
        return {child.pid for child in psutil.Process(pid).children()}
    except psutil.NoSuchProcess:
        return set()


def scrape(port: int) -> dict[str, float]:
    """A program's own metrics on 127.0.0.1:port, by name (unlabelled samples)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


# --- The app: gunicorn ---


def master_modules(env: dict[str, str]) -> list[Path]:
    """The project's modules that gunicorn's master imports by running its config file:
    new workers inherit them from the master, so a SIGHUP does not load them again."""
    program = (
        "import json, runpy, sys\n"
        f"runpy.run_path({str(GUNICORN_CONFIG)!r})\n"
        "files = [getattr(m, '__file__', None) for m in list(sys.modules.values())]\n"
        f"print(json.dumps([f for f in files if f and f.startswith({str(ROOT)!r})]))\n"
    )
    done = run_check([sys.executable, "-c", program], env)
    if done.returncode != 0:
        raise Refused(f"{GUNICORN_CONFIG} fails to run:\n{last_lines(done.stderr)}")
    return [Path(f) for f in json.loads(done.stdout.splitlines()[-1])]


def check_app(cfg: StackConfig, name: str, master: int) -> None:
    """The new code loads, as gunicorn loads it, and a SIGHUP would load all of it."""
    instance = 1 if name == "app" else int(name.split("-")[1])
    with tempfile.TemporaryDirectory(prefix="reload-check-metrics-") as metrics:
        # Its own metrics folder: the config file would otherwise make one and leave it.
        env = {**app_env(cfg, instance), "PROMETHEUS_MULTIPROC_DIR": metrics}
        started = psutil.Process(master).create_time()
        stale = [p for p in master_modules(env) if p.stat().st_mtime > started]
        if stale:
            names = ", ".join(str(p.relative_to(ROOT)) for p in stale[:3])
            names += f" and {len(stale) - 3} more" if len(stale) > 3 else ""
            raise Refused(
                f"changed since the app started: {names}. gunicorn's master imported it "
                "(for its config file), and new workers would inherit the old one beside the "
                f"new code: `make restart C={name}` starts it anew (with one app instance, "
                "requests fail while it starts)"
            )
        argv = [sys.executable, "-m", "service.serve", "--chdir", str(ROOT), "--check-config"]
        check("gunicorn --check-config (imports the app)", argv, env)


def reload_app(cfg: StackConfig, name: str, master: int) -> str:
    """SIGHUP to gunicorn; wait until every old worker is gone and new ones answer."""
    check_app(cfg, name, master)
    old = children(master)
    signalled = time.monotonic()
    signal_component(cfg, name)
    instance = 1 if name == "app" else int(name.split("-")[1])
    graceful = ServerSettings.from_env(app_env(cfg, instance)).graceful_timeout

    def replaced() -> bool:
        now = children(master)
        return bool(now) and not now & old and healthy(cfg.app_port(instance))

    if not until(replaced, graceful + CONFIRM_TIMEOUT):
        raise Refused(f"its workers were not replaced within {graceful + CONFIRM_TIMEOUT} s")
    took = time.monotonic() - signalled
    return f"new workers {sorted(children(master))} answer, {took:.1f} s after the signal"


def healthy(port: int) -> bool:
    """The app instance's /healthz says 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False


# --- nginx ---


def reload_nginx(cfg: StackConfig, master: int) -> str:
    """The new config through `nginx -t`, then SIGHUP: new workers, the old ones finish."""
    live = nginx_config(cfg)
    new = render_nginx(cfg, candidate(live))
    check("nginx -t", ["nginx", "-t", "-p", str(live.parent), "-c", str(new), "-e", "stderr"])
    os.replace(new, live)
    old = children(master)
    signal_component(cfg, "nginx")
    # nginx starts new workers only once it has loaded the file; old ones that still hold
    # a connection finish it first, and may outlive this wait.
    if not until(lambda: bool(children(master) - old), CONFIRM_TIMEOUT):
        raise Refused("nginx started no new workers: it did not take the new config (its log)")
    until(lambda: not children(master) & old, CONFIRM_TIMEOUT)
    lingering = sorted(children(master) & old)
    tail = f"; old {lingering} still finishing requests" if lingering else ""
    return f"new workers {sorted(children(master) - old)}{tail}"


# --- Prometheus and Alertmanager ---


def reload_monitor(cfg: StackConfig, name: str) -> str:
    """Prometheus or Alertmanager: the new config through its checker, then SIGHUP; wait
    until its own metrics say the reload succeeded (or failed: it keeps the old config)."""
    if name == "prometheus":
        live = prometheus_config(cfg)
        new = render_prometheus(cfg, candidate(live))
        check("promtool check config", ["promtool", "check", "config", str(new)])
    else:
        live = alertmanager_config(cfg)
        new = render_alertmanager(cfg, candidate(live))
        check("amtool check-config", ["amtool", "check-config", str(new)])
    os.replace(new, live)
    port = cfg.ports[name]
    ok, stamp = (
        f"{name}_config_last_reload_successful",
        f"{name}_config_last_reload_success_timestamp_seconds",
    )
    before = scrape(port).get(stamp, 0.0)
    signal_component(cfg, name)
    after: dict[str, float] = {}

    def answered() -> bool:
        after.update(scrape(port))
        return after.get(stamp, 0.0) > before or after.get(ok) == 0

    if not until(answered, CONFIRM_TIMEOUT) or after.get(ok) == 0:
        raise Refused(f"{name} did not load the new config ({ok} = {after.get(ok)}; its log)")
    return f"config loaded ({stamp} moved)"


# --- The command ---


def tell(cfg: StackConfig, name: str, event: str) -> None:
    """One line on the caller's terminal, and in .state/logs/reload/current (for whoever
    gets the ticket later; `make logs` shows it too), kept under LOG_FILE_BYTES."""
    say(name, event)
    log = log_dir(cfg, "reload") / "current"
    log.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with log.open("a") as out:
        out.write(f"{stamp} {name}: {event}\n")
    if log.stat().st_size > cfg.log_file_bytes:
        os.replace(log, log.with_name("previous"))
        log.touch()


def signal_component(cfg: StackConfig, name: str) -> None:
    """SIGHUP to the component's process, through its supervisor."""
    subprocess.run(["s6-svc", "-h", str(scan_dir(cfg) / name)], check=True)


def reload(cfg: StackConfig, name: str) -> bool:
    """Reload one component; say what happened; record a refusal for the alert."""
    status = supervise.component_status(scan_dir(cfg), name)
    if status.state != "up" or status.pid is None:
        tell(cfg, name, f"not reloaded: it is {status.state}, not up (`make restart C={name}`)")
        return False
    tell(cfg, name, "reloading")
    try:
        if kind(name) == "app":
            done = reload_app(cfg, name, status.pid)
        elif name == "nginx":
            done = reload_nginx(cfg, status.pid)
        else:
            done = reload_monitor(cfg, name)
    except Refused as exc:
        write_reload_metric(textfile_dir(cfg), name, refused=True)
        tell(cfg, name, f"reload REFUSED, it keeps running what it ran: {exc}")
        return False
    write_reload_metric(textfile_dir(cfg), name, refused=False)
    tell(cfg, name, f"reloaded: {done}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m native.reload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("component", nargs="?", help="one component (default: all of them)")
    args = parser.parse_args(argv)
    here = StackConfig.from_env()
    cfg = started_with(here.state_dir)
    if cfg is None or not supervise.supervisor_running(scan_dir(here)):
        print(f"No stack is running from {here.state_dir}.", file=sys.stderr)
        return 1
    names = [row.name for row in supervise.statuses(cfg) if reloadable(row.name)]
    if args.component:
        if args.component not in names:
            print(
                f"make reload: {args.component!r} is not a component it reloads; it reloads "
                f"{', '.join(names)}",
                file=sys.stderr,
            )
            return 1
        names = [args.component]
    # One reload at a time: two would write the same candidate files.
    with (cfg.state_dir / "reload.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = [reload(cfg, name) for name in names]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
