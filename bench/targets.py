"""What the benchmark measures: the service, or the reference app, each in a stack of its
own (Redis, gunicorn, nginx from the same config files as `make run`) on free ports."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from native.harness import CERT, Stack, make_stack
from native.stack import ROOT, Process

DIRECT, EDGE = "direct", "edge"
# The benchmark sends thousands of requests a second from one address.
NO_RATE_LIMIT = {"RATE_LIMIT_RPS": "1000000", "RATE_LIMIT_BURST": "1000000"}


@dataclass(frozen=True)
class ServerConfig:
    """A gunicorn process model."""

    workers: int
    worker_class: str = "gthread"
    threads: int = 2

    @classmethod
    def parse(cls, label: str) -> ServerConfig:
        """A label ("sync 3", "gthread 2x2") back into a model."""
        kind, _, size = label.partition(" ")
        workers, _, threads = size.partition("x")
        return cls(int(workers), kind, int(threads or 1))

    @property
    def label(self) -> str:
        """e.g. "sync 3" or "gthread 2x2" (workers x threads)."""
        if self.worker_class == "gthread":
            return f"gthread {self.workers}x{self.threads}"
        return f"{self.worker_class} {self.workers}"

    @property
    def env(self) -> dict[str, str]:
        """The settings that select it (the service's and the reference's alike)."""
        return {
            "WEB_CONCURRENCY": str(self.workers),
            "GUNICORN_WORKER_CLASS": self.worker_class,
            "GUNICORN_THREADS": str(self.threads),
        }


@dataclass
class Target:
    """One running app behind its nginx, with the processes whose CPU and memory count."""

    name: str  # "ours" or "reference"
    server: ServerConfig
    stack: Stack

    def url(self, via: str) -> str:
        """Base URL through the TLS edge or straight to gunicorn."""
        if via == EDGE:
            return f"https://127.0.0.1:{self.stack.cfg.edge_port}"
        return f"http://127.0.0.1:{self.stack.cfg.app_port(1)}"

    def processes(self, part: str) -> list[psutil.Process]:
        """The live processes of one part ("app", "nginx", "redis"), children included."""
        top = psutil.Process(self.stack.executors[part].process.pid)
        return [top, *top.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        """The gunicorn workers (the master's children)."""
        return psutil.Process(self.stack.executors["app"].process.pid).children()

    def stop(self) -> None:
        """Stop its processes."""
        self.stack.stop()


def _reference_app(proc: Process) -> Process:
    """Swap the service's gunicorn for the reference app's, on the same address and Redis."""
    if proc.name != "app":
        return proc
    password = Path(proc.env["REDIS_PASSWORD_FILE"]).read_text().strip()
    redis_url = proc.env["REDIS_URL"].replace("redis://", f"redis://:{password}@", 1)
    argv = [sys.executable, "-m", "gunicorn",
            "--config", str(ROOT / "bench" / "reference.gunicorn.conf.py"),
            "--chdir", str(ROOT), "bench.reference_app:app"]  # fmt: skip
    env = {**proc.env, "REFERENCE_REDIS_URL": redis_url}
    return dataclasses.replace(proc, argv=argv, env=env, ready_path=None)


def start(name: str, server: ServerConfig, folder: Path, env: dict[str, str]) -> Target:
    """Start the service ("ours") or the reference app with the given process model."""
    folder.mkdir(parents=True, exist_ok=True)
    adjust = _reference_app if name == "reference" else None
    stack = make_stack(folder, adjust=adjust, **NO_RATE_LIMIT, **server.env, **env)
    stack.start()
    return Target(name=name, server=server, stack=stack)


def seed(target: Target, messages: list[str]) -> list[str]:
    """Store the messages through the edge; return their digests."""
    session = requests.Session()
    session.trust_env = False
    digests = []
    for message in messages:
        r = session.post(f"{target.url(EDGE)}/messages", json={"message": message},
                         verify=CERT, timeout=10)  # fmt: skip
        r.raise_for_status()
        digests.append(r.json()["digest"])
    return digests
