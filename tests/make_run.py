"""`make run` driven as a user drives it, for the tests and the benchmark: started with make
on free ports, its console kept, stopped with a signal, its components seen through
`make status`."""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
import requests
from mirakuru import SimpleExecutor
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from native.settings import ROOT, StackConfig
from tests.harness import CERT, free_ports_env

START_TIMEOUT = 180  # make run installs nothing here, but a cluster takes a while to form
STOP_TIMEOUT = 90  # make run's own limit (native/run.py) and some


def answers(url: str, path: str = "/readyz") -> bool:
    """The edge answers 200 on path."""
    try:
        return requests.get(url + path, verify=CERT, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class MakeRun:
    """One `make run`, its environment, and what it printed."""

    state_dir: Path
    env: dict[str, str]
    make: SimpleExecutor | None = None
    # The repository it runs from: a copy lets a test change files (to break a config that
    # `make reload` then refuses) without touching the real ones.
    root: Path = ROOT
    output: IO[bytes] = field(default_factory=tempfile.TemporaryFile)

    @property
    def make_env(self) -> dict[str, str]:
        """The environment make and its tools run in: this process's, with ours on top."""
        return {**os.environ, **self.env}

    @property
    def settings(self) -> StackConfig:
        """The stack's settings, as make run reads them."""
        return StackConfig.from_env(self.make_env)

    @property
    def url(self) -> str:
        """The public HTTPS base URL."""
        return f"https://localhost:{self.settings.edge_port}"

    def port(self, name: str) -> int:
        """A port of the stack, by its variable's name (PROMETHEUS, MTAIL, ...)."""
        return self.settings.ports[name.lower()]

    def start(self, ready: bool = True) -> MakeRun:
        """make run, waited for until it says it serves and (if `ready`) the edge's /readyz
        says 200; fails with what it printed if it stops first."""
        make = SimpleExecutor(
            ["make", "--no-print-directory", "run"],
            cwd=str(self.root),
            envvars=self.env,  # on top of this process's environment
            stdout=self.output,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
        )
        self.make = make
        make.start()
        make.wait_for(lambda: self.serving(ready) or not make.running())
        if not self.serving(ready):
            raise AssertionError(f"make run did not serve:\n{self.console()[-4000:]}")
        return self

    def serving(self, ready: bool = True) -> bool:
        """make run said it serves, and (if `ready`) the edge says ready."""
        return "Serving https://" in self.console() and (not ready or answers(self.url))

    def console(self) -> str:
        """Everything make run printed so far."""
        self.output.seek(0)
        return self.output.read().decode(errors="replace")

    def signal_stop(self, sig: int = signal.SIGINT) -> None:
        """Stop it as Ctrl-C (SIGINT to the terminal's process group) or `kill` does."""
        make = self.make
        assert make is not None and make.process is not None, "make run was not started"
        os.killpg(make.process.pid, sig)
        # Not make.wait_for: its deadline counts from the start, which may be long past.
        until(lambda: not make.running(), STOP_TIMEOUT, every=0.2)

    def kill(self) -> None:
        """Whatever happened, leave nothing running."""
        if self.make is not None:
            if self.make.running():
                self.signal_stop(signal.SIGTERM)
            self.make.kill()

    def tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`make <args>` (status, stop, restart C=...) for this stack."""
        return subprocess.run(
            ["make", "--no-print-directory", *args],
            cwd=self.root,
            env=self.make_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def status(self) -> dict[str, tuple[str, int | None, int]]:
        """`make status`: component -> (state, pid, restarts)."""
        out = self.tool("status")
        assert out.returncode == 0, out.stdout + out.stderr
        rows = {}
        for line in out.stdout.splitlines()[1:]:  # columns: see native/run.py print_status
            name, state, rest = line[:20].strip(), line[21:33].strip(), line[33:].split()
            pid, restarts = rest[0], int(rest[-1])
            rows[name] = (state, None if pid == "-" else int(pid), restarts)
        return rows

    def pid(self, component: str) -> int:
        """The component's current pid, once it is up."""
        state, pid, _ = self.status()[component]
        assert state == "up" and pid, (component, state)
        return pid

    def processes(self) -> list[psutil.Process]:
        """Every process still running that this make run started (all inherit STATE_DIR)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("STATE_DIR") == str(self.state_dir):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def listening(self) -> set[int]:
        """The stack's ports that something listens on."""
        ours = {int(v) for k, v in self.env.items() if k.endswith("_PORT")}
        return {
            c.laddr.port
            for c in psutil.net_connections("tcp")
            if c.status == "LISTEN" and c.laddr and c.laddr.port in ours
        }


def make_run_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """Free ports and a state folder of its own; the rest as shipped."""
    return {**free_ports_env(), "STATE_DIR": str(state_dir), **extra}


def until(check: Callable[[], object], seconds: float, every: float = 0.05) -> float:
    """Seconds until check() is truthy; fails after `seconds`. (An exception of check's is
    not retried: it is the test's failure.)"""
    started = time.monotonic()
    retrying = Retrying(
        stop=stop_after_delay(seconds), wait=wait_fixed(every), retry=retry_if_result(operator.not_)
    )
    try:
        retrying(check)
    except RetryError:
        raise AssertionError(f"not within {seconds} s") from None
    return time.monotonic() - started
