"""Fixtures: real redis-server, gunicorn and nginx processes on free ports, stopped afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import port_for
import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from mirakuru import HTTPExecutor, SimpleExecutor, TCPExecutor
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from native.stack import (
    DEFAULT_PORTS,
    ROOT,
    Process,
    StackConfig,
    processes,
    redis_instance_config,
)
from service.app import create_app

CERT = str(ROOT / "localhost.crt")
START_TIMEOUT = 60


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    return port_for.select_random()


def eventually(check: Callable[[], object], seconds: float = 150) -> object:
    """check()'s first truthy result, polled every 0.1 s; fails after `seconds`."""
    retrying = Retrying(
        stop=stop_after_delay(seconds),
        wait=wait_fixed(0.1),
        retry=retry_if_result(lambda result: not result)
        | retry_if_exception_type((requests.RequestException, redis.RedisError)),
    )
    return retrying(check)


def free_ports_env() -> dict[str, str]:
    """<NAME>_PORT for every port of a native stack, each a free one."""
    return {f"{name.upper()}_PORT": str(free_port()) for name in DEFAULT_PORTS}


def executor(proc: Process, log_dir: Path) -> SimpleExecutor:
    """A mirakuru executor for a stack process, waiting for its port or ready path."""
    log = (log_dir / f"{proc.name}.log").open("ab")
    common = {"envvars": proc.env, "stdout": log, "stderr": subprocess.STDOUT,
              "timeout": START_TIMEOUT,
              "expected_returncode": proc.stop_exit_code or None}  # fmt: skip
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

    def scrape(self, part: str) -> str:
        """The text a part of the stack serves on /metrics (app_metrics, mtail, ...)."""
        return requests.get(f"http://{self.cfg.address(part)}/metrics", timeout=10).text

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """A request through the TLS edge, verified against localhost.crt."""
        kwargs.setdefault("timeout", 30)
        return self.http.request(method, self.url + path, **kwargs)

    def start(self) -> None:
        """Start every process (redis, app, nginx), each waited for until ready."""
        for ex in self.executors.values():
            ex.start()

    def stop(self) -> None:
        """Stop every process, the edge first."""
        for ex in reversed(self.executors.values()):
            ex.stop()


CORE = ("redis", "app", "nginx")
EVERYTHING = None  # every process of make run


def make_stack(tmp: Path, parts: tuple[str, ...] | None = CORE, **env: str) -> Stack:
    """A stack of the given parts (None: all) on free ports, state and logs in tmp."""
    base = {
        **free_ports_env(),
        "STATE_DIR": str(tmp / "state"),
        "WEB_CONCURRENCY": "2",
        # The shared suite sends many requests from one address; limits have their own test.
        "RATE_LIMIT_RPS": "10000",
        "RATE_LIMIT_BURST": "10000",
    }
    cfg = StackConfig.from_env({**os.environ, **base, **env})

    def wanted(name: str) -> bool:  # "app" stands for every app instance (app-2, ...)
        return parts is None or name in parts or (name.startswith("app-") and "app" in parts)

    executors = {p.name: executor(p, tmp) for p in processes(cfg) if wanted(p.name)}
    http = requests.Session()
    http.verify = CERT
    # Otherwise REQUESTS_CA_BUNDLE or a proxy from the environment would override the above.
    http.trust_env = False
    return Stack(cfg=cfg, executors=executors, http=http, log_dir=tmp)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One native stack shared by the end-to-end tests that do not disturb it."""
    s = make_stack(tmp_path_factory.mktemp("stack"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start a private stack (for tests that stop parts of it or change its settings)."""
    started: list[Stack] = []

    def start(parts: tuple[str, ...] = CORE, **env: str) -> Stack:
        s = make_stack(tmp_path / f"stack{len(started)}", parts, **env)
        started.append(s)
        s.start()
        return s

    yield start
    for s in started:
        s.stop()


def redis_executor(tmp: Path, port: int, *extra: str) -> TCPExecutor:
    """A redis-server with the repo's redis.conf, its data in tmp."""
    argv = ["redis-server", str(redis_instance_config(tmp)), "--bind", "127.0.0.1",
            "--port", str(port), "--dir", str(tmp), *extra]  # fmt: skip
    log = (tmp / "redis.log").open("ab")
    return TCPExecutor(argv, host="127.0.0.1", port=port, stdout=log, timeout=START_TIMEOUT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TCPExecutor]:
    """A real redis-server shared by the unit tests (each test flushes it)."""
    ex = redis_executor(tmp_path_factory.mktemp("redis"), free_port())
    ex.start()
    yield ex
    ex.stop()


@pytest.fixture
def redis_url(redis_server: TCPExecutor) -> str:
    """The URL of the shared redis-server, emptied for this test."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    return url


@pytest.fixture
def app(redis_url: str) -> Iterator[Flask]:
    """A fresh app per test, on the shared Redis."""
    application = create_app({"REDIS_URL": redis_url})
    yield application
    application.extensions["message_store"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client for the app."""
    return app.test_client()


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers: a hung Redis."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()
