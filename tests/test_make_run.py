"""`make run`, the README's first command, starts the stack and stops all of it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile

import psutil
import pytest
import requests
from mirakuru import SimpleExecutor

from native.stack import ROOT
from tests.conftest import CERT, free_ports_env

pytestmark = pytest.mark.stack


def processes_of(state_dir: str) -> list[psutil.Process]:
    """Every process started for this run (they all inherit its STATE_DIR)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("STATE_DIR") == state_dir:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def ready(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", verify=CERT, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def run_once(state_dir: str, stop_signal: int, check) -> None:
    """make run; wait until ready; run check(url); stop it as a user would; nothing is left."""
    ports = free_ports_env()
    env = {**ports, "STATE_DIR": state_dir}
    url = f"https://localhost:{ports['EDGE_PORT']}"
    with tempfile.TemporaryFile() as output:
        make = SimpleExecutor(["make", "--no-print-directory", "run"], cwd=str(ROOT),
                              envvars=env, stdout=output, stderr=subprocess.STDOUT,
                              timeout=120)  # fmt: skip
        make.start()
        try:
            make.wait_for(lambda: ready(url) or not make.running())
            if not ready(url):  # it stopped by itself: say why
                output.seek(0)
                log = output.read().decode(errors="replace")[-3000:]
                pytest.fail(f"make run stopped:\n{log}")
            check(url)
            os.killpg(make.process.pid, stop_signal)  # as Ctrl-C (SIGINT) or `kill` does
            make.wait_for(lambda: not make.running())
            assert processes_of(state_dir) == []
            listening = {c.laddr.port for c in psutil.net_connections("tcp")
                         if c.status == "LISTEN"}  # fmt: skip
            assert listening.isdisjoint(int(p) for p in ports.values())
        finally:
            make.kill()


def test_make_run_serves_stops_cleanly_and_keeps_data(tmp_path):
    state_dir = str(tmp_path / "state")
    stored = {}

    def post(url):
        r = requests.post(url + "/messages", json={"message": "kept"}, verify=CERT, timeout=10)
        assert r.status_code == 201
        stored["digest"] = r.json()["digest"]

    def get(url):
        r = requests.get(f"{url}/messages/{stored['digest']}", verify=CERT, timeout=10)
        assert r.json() == {"message": "kept"}

    run_once(state_dir, signal.SIGINT, post)
    run_once(state_dir, signal.SIGTERM, get)  # the message survived the restart
