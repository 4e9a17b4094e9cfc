"""What the benchmark measures: the service, or the reference app, each in a stack of its
own (Redis, gunicorn, nginx from the same config files as `make run`) on free ports."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
import requests

from bench.measure import CpuTimes, cpu_times, rss
from native.harness import CERT, Stack, make_stack
from native.processes import Process
from native.settings import ROOT

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
    parts: tuple[str, ...] = ("app", "nginx", "redis")

    @property
    def label(self) -> str:
        """Its process model, e.g. "sync 3"."""
        return self.server.label

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

    def cpu_seconds(self) -> CpuTimes:
        """CPU time used so far by each part's processes."""
        return cpu_times((part, p) for part in self.parts for p in self.processes(part))

    def rss_mib(self) -> dict[str, float]:
        """Resident memory: the largest app worker, all of the app, nginx and Redis."""
        return {
            "app_worker_max": round(max(rss(self.workers()), default=0), 1),
            "app_total": round(sum(rss(self.processes("app"))), 1),
            "nginx": round(sum(rss(self.processes("nginx"))), 1),
            "redis": round(sum(rss(self.processes("redis"))), 1),
        }

    def redis(self) -> redis.Redis:
        """A client of its Redis."""
        return self.stack.redis

    def stop(self) -> None:
        """Stop its processes."""
        self.stack.stop()


def _reference_app(proc: Process) -> Process:
    """Swap the service's gunicorn for the reference app's, on the same address and Redis;
    its nginx is the same but for the message cache, which is the service's own work."""
    if proc.name == "nginx":
        conf = Path(proc.argv[proc.argv.index("-c") + 1])
        text = conf.read_text()
        if "proxy_cache $edge_cache_zone;" not in text:
            raise RuntimeError(f"{conf}: no proxy_cache to leave out of the reference's edge")
        conf.write_text(text.replace("proxy_cache $edge_cache_zone;", "proxy_cache off;"))
        return proc
    if proc.name != "app":
        return proc
    password = Path(proc.env["REDIS_PASSWORD_FILE"]).read_text().strip()
    redis_url = proc.env["REDIS_URL"].replace("redis://", f"redis://:{password}@", 1)
    argv = [
        *(sys.executable, "-m", "gunicorn"),
        *("--config", str(ROOT / "bench" / "reference.gunicorn.conf.py")),
        *("--chdir", str(ROOT)),
        "bench.reference_app:app",
    ]
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
        r = session.post(
            f"{target.url(EDGE)}/messages", json={"message": message}, verify=CERT, timeout=10
        )
        r.raise_for_status()
        digests.append(r.json()["digest"])
    return digests
