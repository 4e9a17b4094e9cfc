"""Settings, read from the environment in one place; tests pass a mapping instead."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _get(env: Mapping[str, Any], name: str, default: Any, kind: type) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"setting {name}={raw!r} is not a valid {kind.__name__}") from exc
    if kind in (int, float) and value < 0:
        raise ValueError(f"setting {name}={raw!r} must not be negative")
    return value


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(env: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in TRUE + FALSE:
        raise ValueError(f"setting {name}={raw!r}: one of {', '.join(TRUE + FALSE)}")
    return raw in TRUE


def _redis_password(env: Mapping[str, Any]) -> str | None:
    """REDIS_PASSWORD_FILE (a secret file, preferred) or REDIS_PASSWORD; None: no password."""
    path = env.get("REDIS_PASSWORD_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ValueError(f"setting REDIS_PASSWORD_FILE: cannot read {path}: {exc}") from exc
    return env.get("REDIS_PASSWORD") or None


def _redis_mode(env: Mapping[str, Any]) -> str:
    mode = (env.get("REDIS_MODE") or "standalone").strip().lower()
    if mode not in ("standalone", "sentinel", "cluster"):
        raise ValueError(f"setting REDIS_MODE={mode!r}: standalone, sentinel or cluster")
    if mode == "sentinel" and not env.get("REDIS_SENTINELS"):
        raise ValueError("setting REDIS_MODE=sentinel needs REDIS_SENTINELS (host:port,...)")
    return mode


def _addresses(raw: str) -> tuple[tuple[str, int], ...]:
    """ "host:port,host:port" as pairs."""
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"setting REDIS_SENTINELS: {item!r} is not host:port")
        pairs.append((host, int(port)))
    return tuple(pairs)


@dataclass(frozen=True)
class Settings:
    """What the app needs to serve requests."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str | None = field(default=None, repr=False)  # never in logs or reprs
    redis_mode: str = "standalone"  # or "sentinel", "cluster"
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "mymaster"
    redis_wait_replicas: int = 0  # >0: a 201 only once that many replicas have the write
    redis_wait_timeout_ms: int = 100
    redis_connect_timeout: float = 0.25
    redis_timeout: float = 0.25  # three tries and their backoff stay under a second
    redis_retries: int = 2
    redis_max_connections: int = 8
    max_message_bytes: int = MIB
    max_body_bytes: int = 4 * MIB
    revision: str = "unknown"
    deployment_environment: str = "development"  # in traces: deployment.environment.name
    # The app's own line per request: nginx writes one for every request already.
    access_log: bool = False
    # How many app instances the deployment runs (APP_INSTANCES): exported, so that an
    # instance gone missing is told from a deliberate scale-down (AppInstancesMissing).
    instances_expected: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, Any] | None = None) -> Settings:
        """Build settings from environment variables (or any mapping of the same names)."""
        env = os.environ if env is None else env
        d = cls()
        settings = cls(
            redis_url=_get(env, "REDIS_URL", d.redis_url, str),
            redis_password=_redis_password(env),
            redis_mode=_redis_mode(env),
            redis_sentinels=_addresses(env.get("REDIS_SENTINELS", "")),
            redis_sentinel_master=_get(env, "REDIS_SENTINEL_MASTER", d.redis_sentinel_master, str),
            redis_wait_replicas=_get(env, "REDIS_WAIT_REPLICAS", d.redis_wait_replicas, int),
            redis_wait_timeout_ms=_get(env, "REDIS_WAIT_TIMEOUT_MS", d.redis_wait_timeout_ms, int),
            redis_connect_timeout=_get(
                env, "REDIS_CONNECT_TIMEOUT", d.redis_connect_timeout, float
            ),
            redis_timeout=_get(env, "REDIS_TIMEOUT", d.redis_timeout, float),
            redis_retries=_get(env, "REDIS_RETRIES", d.redis_retries, int),
            redis_max_connections=_get(env, "REDIS_MAX_CONNECTIONS", d.redis_max_connections, int),
            max_message_bytes=_get(env, "MAX_MESSAGE_BYTES", d.max_message_bytes, int),
            max_body_bytes=_get(env, "MAX_BODY_BYTES", d.max_body_bytes, int),
            revision=_get(env, "GIT_REVISION", d.revision, str),
            deployment_environment=_get(
                env, "DEPLOYMENT_ENVIRONMENT", d.deployment_environment, str
            ),
            access_log=_flag(env, "APP_ACCESS_LOG", d.access_log),
            instances_expected=_get(env, "APP_INSTANCES", d.instances_expected, int),
        )
        if settings.instances_expected < 1:
            raise ValueError("APP_INSTANCES must be at least 1")
        if settings.max_body_bytes < settings.max_message_bytes:
            raise ValueError("MAX_BODY_BYTES must be at least MAX_MESSAGE_BYTES")
        return settings


WORKER_CLASSES = ("gthread", "sync")


def _worker_class(env: Mapping[str, Any], default: str) -> str:
    # gthread keeps nginx's upstream connections alive; sync takes one request per connection.
    kind = (env.get("GUNICORN_WORKER_CLASS") or default).strip().lower()
    if kind not in WORKER_CLASSES:
        raise ValueError(f"GUNICORN_WORKER_CLASS must be one of {', '.join(WORKER_CLASSES)}")
    return kind


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_v2_quota(root: Path, membership: str) -> float | None:
    """The smallest cpu.max quota (in CPUs) on this process's cgroup v2 path, if any."""
    path = next((line[3:] for line in membership.splitlines() if line.startswith("0::")), None)
    if path is None:
        return None
    quotas = []
    folder = root / path.strip().lstrip("/")
    while True:
        try:
            quota, period = (folder / "cpu.max").read_text().split()
            if quota != "max":
                quotas.append(int(quota) / int(period))
        except (OSError, ValueError):
            pass
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return min(quotas, default=None)


def _cgroup_v1_quota(root: Path) -> float | None:
    """The cpu controller's CFS quota (in CPUs), as a container sees its own; None: none."""
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP_ROOT, membership: str | None = None) -> int:
    """The CPUs this process may really use: the ones it may run on (its affinity: taskset,
    cpusets), fewer if a cgroup CPU quota (a container's `cpus:` limit) allows fewer.
    os.cpu_count() counts every CPU of the host."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            membership = ""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_v2_quota(root, membership) or _cgroup_v1_quota(root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def default_workers() -> int:
    """One sync worker per usable CPU, plus one for the moments a worker waits on Redis. Each
    serves one request at a time, and nginx buffers whole requests and answers repeated reads
    from its cache, so a worker rarely waits: gunicorn's "2 * CPUs + 1" (for workers that
    wait on I/O) served fewer requests per second on a host shared with nginx and Redis
    (docs/performance.md)."""
    return available_cpus() + 1


@dataclass(frozen=True)
class ServerSettings:
    """How gunicorn runs the app: address, process model, shutdown."""

    bind: str = "0.0.0.0:8000"
    # Also listen on this Unix socket ("": none), for an nginx on the same host: cheaper per
    # request than loopback TCP for both (docs/performance.md). make run sets it.
    socket: str = ""
    metrics_bind: str = "0.0.0.0:9101"
    workers: int = field(default_factory=default_workers)
    # sync: `make bench` measured it cheaper per request than gthread for this app, and
    # better spread over the workers (docs/performance.md).
    worker_class: str = "sync"
    threads: int = 2
    graceful_timeout: int = 10
    timeout: int = 30

    @property
    def threads_per_worker(self) -> int:
        """Threads each worker serves requests on: sync workers have one."""
        return self.threads if self.worker_class == "gthread" else 1

    @property
    def binds(self) -> list[str]:
        """gunicorn's listen addresses: APP_BIND, and the Unix socket if there is one."""
        return [self.bind, *([f"unix:{self.socket}"] if self.socket else [])]

    @property
    def capacity(self) -> int:
        """Requests one app instance serves at once."""
        return self.workers * self.threads_per_worker

    @classmethod
    def from_env(cls, env: Mapping[str, Any] | None = None) -> ServerSettings:
        """Build server settings from environment variables."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            bind=_get(env, "APP_BIND", d.bind, str),
            socket=_get(env, "APP_SOCKET", d.socket, str),
            metrics_bind=_get(env, "METRICS_BIND", d.metrics_bind, str),
            workers=max(1, _get(env, "WEB_CONCURRENCY", d.workers, int)),
            worker_class=_worker_class(env, d.worker_class),
            threads=max(1, _get(env, "GUNICORN_THREADS", d.threads, int)),
            graceful_timeout=_get(env, "GRACEFUL_TIMEOUT", d.graceful_timeout, int),
            timeout=_get(env, "WORKER_TIMEOUT", d.timeout, int),
        )


# Settings of ours that gunicorn also reads itself, from os.environ, when it is imported, and
# fails on when empty (compose passes an unset variable as empty). Here, as for every
# setting, empty means the default.
READ_BY_GUNICORN = ("WEB_CONCURRENCY",)


def unset_empty_gunicorn_settings(environ: MutableMapping[str, str]) -> None:
    """Remove from environ those of READ_BY_GUNICORN that are empty, before gunicorn is
    imported."""
    for name in READ_BY_GUNICORN:
        if name in environ and not environ[name].strip():
            del environ[name]
