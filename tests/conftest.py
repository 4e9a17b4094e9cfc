"""Fixtures, and only fixtures: real redis-server, gunicorn and nginx processes on free
ports, stopped afterwards; the app on the shared Redis; an OTLP receiver. Helpers the tests
share are in tests/helpers.py (which says where each kind of name comes from)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from mirakuru import TCPExecutor

from native.ports import free_port
from service.app import create_app
from tests.docker_engine import Engine
from tests.harness import CORE, Stack, make_stack, redis_executor
from tests.otlp_receiver import Receiver, start_receiver


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


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A real OTLP/HTTP receiver, for a module's stacks to export their spans to."""
    r = start_receiver()
    yield r
    r.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
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


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A real Docker Engine (Debian's dockerd) of the tests' own, with the Debian base
    images the Dockerfiles name; stopped, with nothing left running, after the session."""
    e = Engine()
    e.start()
    try:
        e.ensure_base_images()
        yield e
    finally:
        e.stop()
