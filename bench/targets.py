"""What the benchmark measures: the service, or the reference app, each in a stack of its
own (Redis, gunicorn, nginx from the same config files as `make run`) on free ports."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from bench.measure import CpuTimes, cpu_times, rss
from native.configs import nginx_values, render_template
from native.ports import free_port
from native.processes import Process
from native.settings import ROOT, StackConfig
from tests.harness import CORE, Stack, edge_session, make_stack

DIRECT, EDGE = "direct", "edge"
# The benchmark sends thousands of requests a second from one address.
NO_RATE_LIMIT = {"RATE_LIMIT_RPS": "1000000", "RATE_LIMIT_BURST": "1000000"}
# And its 32 connections fill the connections the edge admits to an app instance by default
# (EDGE_APP_MAX_CONNS): make run's blackbox probe, through the edge every 15 s, would have a
# burst of the load's requests shed with 503s. Shedding is make bench-overload's to measure.
LOAD_TEST_LIMITS = {**NO_RATE_LIMIT, "EDGE_APP_MAX_CONNS": "256"}
PEER_NGINX_TEMPLATE = ROOT / "bench" / "nginx-peer.conf.template"
# Beside this Python, whether or not the venv is on PATH.
PEER_INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")


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
    peer_metrics_port: int | None = None  # the peer's prometheus-flask-exporter

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
        process = self.stack.executors[part].process
        assert process is not None
        top = psutil.Process(process.pid)
        return [top, *top.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        """The gunicorn workers (the master's children)."""
        assert self.stack.executors["app"].process is not None
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
    return _gunicorn(proc, "bench.reference_app:app", {})


def _gunicorn(proc: Process, app: str, env: dict[str, str], *wrapper: str) -> Process:
    """The service's app process running another app under gunicorn, with the reference's
    settings (bench/reference.gunicorn.conf.py), on the same address and Redis."""
    password = Path(proc.env["REDIS_PASSWORD_FILE"]).read_text().strip()
    redis_url = proc.env["REDIS_URL"].replace("redis://", f"redis://:{password}@", 1)
    argv = [
        *wrapper,
        *(sys.executable, "-m", "gunicorn"),
        *("--config", str(ROOT / "bench" / "reference.gunicorn.conf.py")),
        *("--chdir", str(ROOT)),
        app,
    ]
    env = {**proc.env, "REFERENCE_REDIS_URL": redis_url, **env}
    return dataclasses.replace(proc, argv=argv, env=env, ready_path=None)


class _Peer:
    """Swaps in the instrumented peer (bench/peer_app.py) under `opentelemetry-instrument`,
    exporting its traces to sink, behind nginx as its author would write it
    (bench/nginx-peer.conf.template)."""

    def __init__(self, folder: Path, sink: str) -> None:
        self.folder = folder
        self.sink = sink
        self.app_address = ""
        self.metrics_port = free_port()

    def __call__(self, proc: Process) -> Process:
        if proc.name == "app":
            self.app_address = proc.env["APP_BIND"]
            # "--": its own options would take gunicorn's --config for theirs
            return _gunicorn(proc, "bench.peer_app:app", self.env(), PEER_INSTRUMENT, "--")
        if proc.name == "nginx":
            conf = self.nginx_conf(f"127.0.0.1:{proc.port}")
            argv = ["nginx", "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"]
            return dataclasses.replace(proc, argv=argv)
        return proc

    def env(self) -> dict[str, str]:
        """The settings its libraries' docs have a user set: the distro's SDK set-up exporting
        traces only (metrics are prometheus-flask-exporter's, logs its access lines)."""
        multiproc = self.folder / "prometheus-multiproc"
        shutil.rmtree(multiproc, ignore_errors=True)
        multiproc.mkdir(parents=True)
        return {
            "OTEL_SERVICE_NAME": "peer",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.sink,
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
            "PEER_METRICS_PORT": str(self.metrics_port),
        }

    def nginx_conf(self, listen: str) -> Path:
        """Its nginx.conf, in a prefix folder of its own."""
        run_dir = self.folder / "peer-nginx"
        run_dir.mkdir(parents=True, exist_ok=True)
        edge = nginx_values(StackConfig(state_dir=self.folder))  # the certificate, key, user
        values = {
            "LISTEN": listen,
            "APP_ADDRESS": self.app_address,
            "TLS_CERT": edge["TLS_CERT"],
            "TLS_KEY": edge["TLS_KEY"],
            "NGINX_RUN_DIR": str(run_dir),
            "NGINX_USER": edge["NGINX_USER"],
        }
        return render_template(PEER_NGINX_TEMPLATE, values, run_dir / "nginx.conf")


def start(
    name: str, server: ServerConfig, folder: Path, env: dict[str, str], sink: str = ""
) -> Target:
    """Start the service ("ours"), the reference app or the instrumented peer (exporting its
    traces to sink) with the given process model."""
    folder.mkdir(parents=True, exist_ok=True)
    peer = _Peer(folder, sink) if name == "peer" else None
    adjust: Callable[[Process], Process] | None = peer
    if name == "reference":
        adjust = _reference_app
    # parts and adjust given in place, so that the settings can only be settings
    stack = make_stack(folder, CORE, adjust, **LOAD_TEST_LIMITS, **server.env, **env)
    stack.start()
    port = peer.metrics_port if peer else None
    return Target(name=name, server=server, stack=stack, peer_metrics_port=port)


def seed(target: Target, messages: list[str]) -> list[str]:
    """Store the messages through the edge; return their digests."""
    session = edge_session()
    digests = []
    for message in messages:
        r = session.post(f"{target.url(EDGE)}/messages", json={"message": message}, timeout=10)
        r.raise_for_status()
        digests.append(r.json()["digest"])
    return digests
