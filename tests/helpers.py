"""Helpers the tests share: plain functions, classes and constants, no fixtures.

Where a test module takes what it needs from, one rule each:
- the native stack started for a test (`make_stack`, `Stack`, `CERT`, `redis_executor`,
  `edge_session`, ...): from `tests.harness`; `make run` driven as a user drives it:
  `tests.make_run`; the trace sink: `tests.otlp_receiver`; what the runner itself holds
  (`free_port`, the settings, the processes): from the `native` modules. Nothing re-exports
  them.
- fixtures (`stack`, `stack_factory`, `redis_url`, `app`, `client`, `receiver`, ...): from
  tests/conftest.py, by pytest, by name. Nothing is imported from conftest.py.
- what only the tests need: from here, or from the module beside it for one subject:
  tests/compose_cli.py (the Compose CLI), tests/dashboards.py (the Grafana dashboards),
  tests/metrics_text.py (Prometheus text).

The `stack` marker: a test that starts a server process of its own (redis-server, gunicorn,
nginx, mtail, Prometheus, `make run`, ...), directly or through a fixture (`stack`,
`stack_factory`, a module's own stack), is marked `stack`; so is one that runs longer than
about ten seconds. The others, `pytest -m "not stack"`, run in a quarter of a minute: they may
use the one redis-server the session shares (`redis_server`, `redis_url`, `app`, `client`)
and run short one-shot tools (promtool check, nginx -t, amtool, mtail --one_shot, the Compose
CLI's config).
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis
import requests
import yaml
from flask import Flask
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from native.settings import ROOT
from service.config import Settings
from service.metrics import StoreMetrics
from service.redis_clients import make_client
from service.store import MessageStore
from tests.harness import Stack

RULE_FILES = sorted((ROOT / "monitoring" / "prometheus" / "rules").glob("*.yml"))


def prometheus_rules(kind: str) -> list[dict]:
    """Every rule of the shared rule files that has `kind` ("alert" or "record")."""
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


FOO_DIGEST = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"  # of "foo"
JSON = {"Content-Type": "application/json"}


def sha256(text: str) -> str:
    """The digest the service gives a message: SHA-256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def eventually(check: Callable[[], object], seconds: float = 150) -> object:
    """check()'s first truthy result, polled every 0.1 s; fails after `seconds`."""
    retrying = Retrying(
        stop=stop_after_delay(seconds),
        wait=wait_fixed(0.1),
        retry=retry_if_result(lambda result: not result)
        | retry_if_exception_type((requests.RequestException, redis.RedisError)),
    )
    return retrying(check)


def edge_access_lines(stack: Stack, request_ids: list[str], seconds: float = 10) -> list[dict]:
    """nginx's JSON access line of each request, in order, once all are written (nginx
    writes them in blocks, at least once a second)."""

    def found() -> list[dict] | None:
        lines = {x["request_id"]: x for x in stack.edge_lines() if x["request_id"] in request_ids}
        return [lines[i] for i in request_ids] if len(lines) == len(request_ids) else None

    return eventually(found, seconds)


def prometheus_query(address: str, expr: str, at: float | None = None) -> dict:
    """Prometheus's answer (JSON) to an instant query, now or at a given time."""
    params = {"query": expr} if at is None else {"query": expr, "time": at}
    return requests.get(f"http://{address}/api/v1/query", params=params, timeout=10).json()


def mtail_one_shot(log: Path) -> str:
    """The edge metrics (Prometheus text) the real mtail makes of a whole log, read once."""
    progs = ["--progs", str(ROOT / "monitoring" / "mtail"), "--emit_prog_label=false"]
    once = ["--logs", str(log), "--one_shot", "--one_shot_format", "prometheus"]
    port = ["--address", "127.0.0.1", "--port", "0"]  # it opens its HTTP port even here
    argv = ["mtail", *progs, *once, *port]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def run_in_multiprocess_mode(program: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """A Python program in a fresh interpreter, with prometheus_client in multiprocess mode
    (metric files in folder): the mode is chosen at its first import, so not in this one."""
    return subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def nginx_check(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on a config file, with prefix as nginx's own folder."""
    return subprocess.run(
        ["nginx", "-t", "-p", str(prefix), "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        check=False,
    )


def traced_store(
    settings: Settings, wait: tuple[int, int] = (0, 0)
) -> tuple[MessageStore, TracerProvider, InMemorySpanExporter]:
    """A store whose Redis commands are traced, as the app's are, by a tracer provider of
    its own; the exporter holds every span that provider finished."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = MessageStore(
        lambda: make_client(settings),
        StoreMetrics.create(CollectorRegistry()),
        wait,
        trace_client=functools.partial(
            RedisInstrumentor.instrument_client, tracer_provider=provider
        ),
    )
    return store, provider, exporter


class FailoverWrites:
    """Writers posting distinct messages to an app (Flask's test client, one a thread)
    for as long as the `with` block runs, as clients do while Redis fails over. Every answer
    is recorded, in order: (message, status, JSON body)."""

    def __init__(self, app: Flask, tag: str, writers: int = 4) -> None:
        self.app = app
        self.tag = tag
        self.results: list[tuple[str, int, dict]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(n,)) for n in range(writers)]

    def _write(self, n: int) -> None:
        client = self.app.test_client()
        i = 0
        while not self._stop.is_set():
            message = f"{self.tag}-{n}-{i}"
            r = client.post("/messages", json={"message": message})
            self.results.append((message, r.status_code, r.get_json()))
            i += 1

    def __enter__(self) -> FailoverWrites:
        for t in self._threads:
            t.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def statuses(self) -> dict[int, int]:
        """How many answers had each status."""
        return dict(Counter(status for _, status, _ in self.results))

    def acknowledged(self) -> list[tuple[str, str]]:
        """(message, digest) of every write answered 201."""
        return [(m, body["digest"]) for m, status, body in self.results if status == 201]
