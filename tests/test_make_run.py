"""`make run`, the README's first command: it starts the stack, says what it runs, refuses a
second start, keeps each topology's messages, and stops all of it cleanly."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from native.settings import ROOT
from tests.harness import CERT, cluster_ports_env
from tests.make_run import MakeRun, make_run_env, until

pytestmark = pytest.mark.stack


def post(run: MakeRun, message: str) -> str:
    r = requests.post(run.url + "/messages", json={"message": message}, verify=CERT, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["digest"]


def get(run: MakeRun, digest: str) -> requests.Response:
    return requests.get(f"{run.url}/messages/{digest}", verify=CERT, timeout=10)


def read_logs(folder: Path) -> str:
    """A component's log files, oldest first (one may be mid-rotation, and missing)."""
    text = ""
    for path in [*sorted(folder.glob("@*")), folder / "current"]:
        with contextlib.suppress(FileNotFoundError):
            text += path.read_text()
    return text


def run_once(env: dict[str, str], check, stop_signal: int = signal.SIGINT) -> MakeRun:
    """make run; wait until it serves; check(run); stop it as a user would; nothing is left:
    no process it started, no port of the stack listening."""
    run = MakeRun(state_dir=Path(env["STATE_DIR"]), env=env)
    try:
        run.start()
        check(run)
        run.signal_stop(stop_signal)
        assert run.processes() == []
        assert run.listening() == set()
        assert "make run: stopped" in run.console()
    finally:
        run.kill()
    return run


def test_make_run_serves_stops_cleanly_and_keeps_data(tmp_path):
    env = make_run_env(tmp_path / "state")
    stored = {}
    run_once(env, lambda run: stored.update(digest=post(run, "kept")), signal.SIGINT)
    # The message survived the restart; SIGTERM stops it as Ctrl-C does.
    run_once(
        env, lambda run: get(run, stored["digest"]).json() == {"message": "kept"}, signal.SIGTERM
    )


def test_status_a_second_start_and_the_logs(tmp_path):
    # Small log files, to see them rotate: at 4 KiB (s6-log's smallest), 3 kept. The app's
    # own access line (off by default: nginx writes one) so that the app's log rotates too.
    env = make_run_env(
        tmp_path / "state", LOG_FILE_BYTES="4096", LOG_FILES="3", APP_ACCESS_LOG="true"
    )

    def check(run: MakeRun) -> None:
        status = run.status()
        assert set(status) >= {
            "redis",
            "app",
            "nginx",
            "mtail",
            "prometheus",
            "alertmanager",
            "redis-exporter",
            "nginx-exporter",
            "node-exporter",
        }
        assert all(state == "up" and pid for state, pid, _ in status.values()), status
        # A second make run on the same state folder says so, and disturbs nothing.
        second = run.tool("run")
        assert second.returncode != 0
        assert "already running" in second.stderr + second.stdout
        # Or on the same ports from another folder.
        other = run.tool("run", f"STATE_DIR={tmp_path / 'other'}")
        assert "ports are already in use" in other.stderr + other.stdout
        assert run.status() == status
        # Every request is logged to files, never through the console, and the files rotate.
        for i in range(100):
            r = requests.post(
                run.url + "/messages", json={"message": f"logged {i}"}, verify=CERT, timeout=10
            )
        last = r.headers["X-Request-ID"]
        for name in ("app", "nginx"):
            folder = run.state_dir / "logs" / name
            until(lambda f=folder: last in read_logs(f), 5)
            rotated = list(folder.glob("@*"))
            assert 1 <= len(rotated) <= 3, rotated
            sizes = [f.stat().st_size for f in [*rotated, folder / "current"]]
            # s6-log rotates once a write takes current past the size: a file may exceed it
            # by one block of lines (nginx writes 32 KiB blocks).
            assert all(size <= 4096 + 32768 for size in sizes), (name, sizes)
        assert '"service.access"' not in run.console()
        assert '"route":"/messages"' not in run.console()
        # make logs follows them all.
        follow = subprocess.run(
            ["timeout", "3", "make", "--no-print-directory", "logs"],
            cwd=ROOT,
            env={**os.environ, **run.env},
            capture_output=True,
            text=True,
            check=False,
        )
        assert "logs/app/current <==" in follow.stdout and last in follow.stdout

    run = run_once(env, check)
    console = run.console()
    for name in ("redis", "app", "nginx", "prometheus"):
        assert f"{name}: starting" in console and f"{name}: ready" in console
        assert f"{name}: stopped" in console


def test_each_topology_keeps_its_messages(tmp_path):
    """Switching between one Redis and a cluster, back and forth, loses nothing: each
    topology keeps its own data, and make run says where."""
    single = make_run_env(tmp_path / "state")
    cluster = {**single, "REDIS_TOPOLOGY": "cluster", **cluster_ports_env()}
    stored = {}

    def first_single(run):
        stored["single"] = post(run, "stored in the single Redis")
        assert "Redis topology single" in run.console()

    def first_cluster(run):
        assert "Redis topology cluster" in run.console()
        assert "redis-cluster: job done" in run.console()
        assert get(run, stored["single"]).status_code == 404  # not there: its own data
        stored["cluster"] = post(run, "stored in the cluster")

    def back_to_single(run):
        assert get(run, stored["single"]).json() == {"message": "stored in the single Redis"}

    def back_to_cluster(run):
        assert get(run, stored["cluster"]).json() == {"message": "stored in the cluster"}

    run_once(single, first_single)
    run_once(cluster, first_cluster)
    run_once(single, back_to_single)
    run_once(cluster, back_to_cluster)


def test_a_failed_job_is_a_clear_error_and_stops_nothing(tmp_path):
    """The cluster join fails (node 1 holds data, as it did when both topologies shared a
    folder): make run says so, and every component keeps running."""
    single = make_run_env(tmp_path / "state")
    run_once(single, lambda run: post(run, "data in node 1"))
    node_1 = tmp_path / "state" / "redis-cluster" / "redis"
    shutil.copytree(tmp_path / "state" / "redis" / "appendonlydir", node_1 / "appendonlydir")
    run = MakeRun(
        state_dir=tmp_path / "state",
        env={**single, "REDIS_TOPOLOGY": "cluster", **cluster_ports_env()},
    )
    try:
        run.start(ready=False)  # the store cannot be ready: the cluster never formed
        console = run.console()
        assert "redis-cluster: job FAILED" in console
        assert "The other components keep running" in console
        assert run.make.running()
        assert all(state == "up" for state, _, _ in run.status().values())
        r = requests.get(run.url + "/healthz", verify=CERT, timeout=5)
        assert r.status_code == 200
    finally:
        run.kill()


def test_a_killed_make_run_leaves_a_stack_that_make_stop_stops(tmp_path):
    """If make run itself is SIGKILLed, its supervisor keeps the stack serving; the next
    make run says so instead of starting a second one, and `make stop` stops it all."""
    env = make_run_env(tmp_path / "state")
    run = MakeRun(state_dir=tmp_path / "state", env=env)
    try:
        run.start()
        os.killpg(run.make.process.pid, signal.SIGKILL)  # make and make run, not the stack
        run.make.wait_for(lambda: not run.make.running())
        assert post(run, "still served")
        again = run.tool("run")
        assert again.returncode != 0
        assert "its make run was killed): `make stop` stops it" in again.stderr
        stop = run.tool("stop")
        assert stop.returncode == 0 and "Stopped." in stop.stdout, stop.stdout + stop.stderr
        assert run.processes() == []
        assert run.listening() == set()
    finally:
        run.kill()


def test_make_stop_ends_the_foreground_make_run_with_status_0(tmp_path):
    """`make stop` from another terminal is a stop that was asked for: the make run in the
    foreground says so and exits 0, as after Ctrl-C (make would print `Error 1` otherwise)."""
    run = MakeRun(state_dir=tmp_path / "state", env=make_run_env(tmp_path / "state"))
    try:
        run.start()
        stop = run.tool("stop")
        assert stop.returncode == 0 and "Stopped." in stop.stdout, stop.stdout + stop.stderr
        until(lambda: not run.make.running(), 30, every=0.2)
        console = run.console()
        assert run.make.process.returncode == 0, console[-2000:]
        assert "make run: stopped by make stop" in console
        assert "ended by itself" not in console
        assert "make: ***" not in console  # make's own line for a failed recipe
        assert run.processes() == []
        assert run.listening() == set()
    finally:
        run.kill()


def test_a_supervisor_that_ends_unasked_still_fails_make_run(tmp_path):
    """The supervisor ending without `make stop` (here: SIGTERM to s6-svscan alone, which
    stops the stack as asked by no one) is still a failure: make run says so, exits non-zero."""
    run = MakeRun(state_dir=tmp_path / "state", env=make_run_env(tmp_path / "state"))
    try:
        run.start()
        (svscan,) = [p for p in run.processes() if p.name() == "s6-svscan"]
        svscan.send_signal(signal.SIGTERM)
        until(lambda: not run.make.running(), 60, every=0.2)
        console = run.console()
        assert run.make.process.returncode != 0, console[-2000:]
        assert "the supervisor (s6-svscan) ended by itself" in console
        assert "stopped by make stop" not in console
    finally:
        run.kill()
