"""The native stack's processes started under mirakuru on free ports, each waited for until
ready and stopped afterwards: what the tests and the benchmark run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

import redis
import requests
from mirakuru import HTTPExecutor, SimpleExecutor, TCPExecutor

from native.configs import CERTIFICATE
from native.edge_cache import own_edge_cache_dir, remove_edge_cache
from native.ports import bindable, free_port
from native.processes import Process, prepare_stack
from native.redis_files import redis_instance_config
from native.settings import DEFAULT_PORTS, StackConfig

CERT = str(CERTIFICATE)
START_TIMEOUT = 60


# A second app instance and cluster nodes 2-6 use the ports right above the named ones.
PORT_BLOCK = 6


def free_ports_env() -> dict[str, str]:
    """<NAME>_PORT for every port of a native stack: each free, and no two within PORT_BLOCK
    of each other. (Drawn independently, two of the 13 would be the same port in one stack
    of 250, and the stack would fail to start.)"""
    taken: set[int] = set()
    env = {}
    for name in DEFAULT_PORTS:
        port = free_port()
        while not taken.isdisjoint(range(port - PORT_BLOCK + 1, port + PORT_BLOCK)):
            port = free_port()
        taken.add(port)
        env[f"{name.upper()}_PORT"] = str(port)
    return env


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = random.randint(20000, 40000)
        if all(bindable(p) for p in (port, port + 10000)):
            return port


def cluster_ports_env() -> dict[str, str]:
    """REDIS_PORT and REDIS_2_PORT ... REDIS_6_PORT for a native cluster, bus ports free."""
    ports = {"REDIS_PORT": str(free_cluster_port())}
    ports.update({f"REDIS_{n}_PORT": str(free_cluster_port()) for n in range(2, 7)})
    return ports


class ExecutorOptions(TypedDict):
    """mirakuru's options that every executor of a stack process gets."""

    envvars: dict[str, str]
    stdout: IO[bytes]
    stderr: int
    timeout: float
    stop_signal: int
    expected_returncode: int | None


def executor(proc: Process, log_dir: Path) -> SimpleExecutor:
    """A mirakuru executor for a stack process, waiting for its port or ready path."""
    log = (log_dir / f"{proc.name}.log").open("ab")
    common = ExecutorOptions(
        envvars=proc.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        timeout=START_TIMEOUT,
        stop_signal=signal.Signals[f"SIG{proc.stop_signal}"],
        expected_returncode=proc.stop_exit_code or None,
    )
    if proc.port is None:  # a job with nothing to wait for
        return SimpleExecutor(proc.argv, **common)
    if proc.ready_path:
        url = f"http://127.0.0.1:{proc.port}{proc.ready_path}"
        return HTTPExecutor(proc.argv, url=url, method="GET", **common)
    return TCPExecutor(proc.argv, host="127.0.0.1", port=proc.port, **common)


@dataclass
class Stack:
    """A running native stack: the same processes `make run` starts, on free ports."""

    cfg: StackConfig
    executors: dict[str, SimpleExecutor]
    http: requests.Session
    log_dir: Path  # <process name>.log: each process's stdout and stderr

    @property
    def url(self) -> str:
        """The public HTTPS base URL, through nginx."""
        return f"https://localhost:{self.cfg.edge_port}"

    @property
    def redis(self) -> redis.Redis:
        """A client of the stack's own Redis, for checking what was stored."""
        password = self.cfg.redis_password_file.read_text().strip()
        return redis.Redis(port=self.cfg.ports["redis"], password=password)

    def edge_lines(self) -> list[dict[str, Any]]:
        """nginx's JSON access lines so far (written in blocks, at least once a second)."""
        text = (self.log_dir / "nginx.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def scrape(self, part: str) -> str:
        """The text a part of the stack serves on /metrics (app_metrics, mtail, ...)."""
        return requests.get(f"http://{self.cfg.address(part)}/metrics", timeout=10).text

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request through the TLS edge, verified against localhost.crt."""
        kwargs.setdefault("timeout", 30)
        return self.http.request(method, self.url + path, **kwargs)

    def start(self) -> None:
        """Start every process (redis, app, nginx), each waited for until ready."""
        own_edge_cache_dir(self.cfg)  # made here, as removed by stop()
        for ex in self.executors.values():
            ex.start()

    def stop(self) -> None:
        """Stop every process, the edge first."""
        for ex in reversed(self.executors.values()):
            ex.stop()
        remove_edge_cache(self.cfg)


CORE = ("redis", "app", "nginx")
EVERYTHING = None  # every process of make run


def make_stack(
    tmp: Path,
    parts: tuple[str, ...] | None = CORE,
    adjust: Callable[[Process], Process] | None = None,
    **env: str,
) -> Stack:
    """A stack of the given parts (None: all) on free ports, state and logs in tmp; adjust()
    may change a process before it is started (the benchmark swaps in its reference app)."""
    base = {
        **free_ports_env(),
        "STATE_DIR": str(tmp / "state"),
        "WEB_CONCURRENCY": "2",
        # The shared suite sends many requests from one address; limits have their own test.
        "RATE_LIMIT_RPS": "10000",
        "RATE_LIMIT_BURST": "10000",
    }
    # Its processes inherit this one's environment, as make run's do, with ours on top.
    cfg = StackConfig.from_env({**os.environ, **base, **env})

    def wanted(name: str) -> bool:  # "app" stands for every app instance (app-2, ...)
        return parts is None or name in parts or (name.startswith("app-") and "app" in parts)

    procs = [adjust(p) if adjust else p for p in prepare_stack(cfg) if wanted(p.name)]
    executors = {p.name: executor(p, tmp) for p in procs}
    return Stack(cfg=cfg, executors=executors, http=edge_session(), log_dir=tmp)


def edge_session() -> requests.Session:
    """A session for the TLS edge, verified against localhost.crt."""
    session = requests.Session()
    session.verify = CERT
    # Otherwise REQUESTS_CA_BUNDLE or a proxy from the environment would override the above.
    session.trust_env = False
    return session


def redis_executor(tmp: Path, port: int, *extra: str) -> TCPExecutor:
    """A redis-server with the repo's redis.conf, its data in tmp."""
    argv = [
        "redis-server",
        str(redis_instance_config(tmp)),
        *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp)),
        *extra,
    ]
    log = (tmp / "redis.log").open("ab")
    return TCPExecutor(argv, host="127.0.0.1", port=port, stdout=log, timeout=START_TIMEOUT)
