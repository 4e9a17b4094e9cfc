"""The service as shipped: `make run` with its defaults (supervisor, monitoring, worker model,
sampling), started as a user starts it (tests/make_run.py) on free ports with a state folder
of its own. The only other changes: traces go to the benchmark's OTLP sink, and the
per-client rate limit and the edge's limit on connections to the app are lifted
(bench/targets.py LOAD_TEST_LIMITS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from bench.measure import CpuTimes, cpu_times, rss
from bench.supervision import PARTS, kind_of
from bench.targets import EDGE, LOAD_TEST_LIMITS, ServerConfig
from service.config import ServerSettings, default_workers
from tests.make_run import MakeRun, make_run_env


def shipped_server() -> ServerConfig:
    """The app's process model as shipped (no WEB_CONCURRENCY etc. set) on this machine."""
    d = ServerSettings()
    return ServerConfig(default_workers(), d.worker_class, d.threads)


@dataclass
class ShippedTarget:
    """A running `make run`: every process it started counts, by kind."""

    run: MakeRun
    name: str = "ours"
    parts: tuple[str, ...] = PARTS

    @property
    def label(self) -> str:
        """make run and the app's model, e.g. "make run (sync 5)"."""
        return f"make run ({shipped_server().label})"

    def url(self, via: str) -> str:
        """Through the TLS edge (what is measured), or straight to gunicorn (for checks)."""
        if via == EDGE:
            return f"https://127.0.0.1:{self.run.port('EDGE')}"
        return f"http://127.0.0.1:{self.run.port('APP')}"

    def descendants(self) -> list[psutil.Process]:
        """Every process make run started and that still runs."""
        assert self.run.make is not None and self.run.make.process is not None
        return psutil.Process(self.run.make.process.pid).children(recursive=True)

    def cpu_seconds(self) -> CpuTimes:
        """CPU time used so far by each process, by kind (bench/supervision.py)."""
        pairs = []
        for proc in self.descendants():
            try:
                pairs.append((kind_of(proc), proc))
            except psutil.NoSuchProcess:
                continue
        return cpu_times(pairs)

    def gunicorn_master(self) -> psutil.Process:
        """The app's gunicorn master: its process of kind app whose parent is not one."""
        apps = {}
        for proc in self.descendants():
            try:
                if kind_of(proc) == "app":
                    apps[proc.pid] = proc
            except psutil.NoSuchProcess:
                continue
        masters = [p for p in apps.values() if p.ppid() not in apps]
        if len(masters) != 1:
            raise RuntimeError(f"expected one gunicorn master, found {masters}")
        return masters[0]

    def workers(self) -> list[psutil.Process]:
        """The gunicorn workers: the master's children."""
        return self.gunicorn_master().children()

    def rss_mib(self) -> dict[str, float]:
        """Resident memory: the largest worker, the app (master and workers), nginx, Redis."""
        by_kind: dict[str, list[psutil.Process]] = {"app": [], "nginx": [], "redis": []}
        for proc in self.descendants():
            try:
                by_kind.setdefault(kind_of(proc), []).append(proc)
            except psutil.NoSuchProcess:
                continue
        return {
            "app_worker_max": round(max(rss(self.workers()), default=0), 1),
            "app_total": round(sum(rss(by_kind["app"])), 1),
            "nginx": round(sum(rss(by_kind["nginx"])), 1),
            "redis": round(sum(rss(by_kind["redis"])), 1),
        }

    def worker_rss_mib(self) -> list[float]:
        """Each worker's resident memory, by pid order."""
        return [round(m, 1) for m in rss(sorted(self.workers(), key=lambda p: p.pid))]

    def redis(self) -> redis.Redis:
        """A client of make run's Redis (its password is in the state folder)."""
        password = (self.run.state_dir / "redis" / "password").read_text().strip()
        return redis.Redis(port=self.run.port("REDIS"), password=password)

    def stop(self) -> None:
        """Stop make run as Ctrl-C would, and make sure nothing is left."""
        self.run.kill()


def start_shipped(folder: Path, otlp_endpoint: str) -> ShippedTarget:
    """make run, waited for until its edge says ready."""
    state = folder / "state"
    env = make_run_env(state, OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint, **LOAD_TEST_LIMITS)
    run = MakeRun(state_dir=state, env=env)
    try:
        run.start()
    except BaseException:
        run.kill()
        raise
    return ShippedTarget(run)
