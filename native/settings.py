"""The native stack's settings: the one place the runner reads its environment variables.

StackConfig.from_env reads them all, with their defaults; everything else in native/ takes
a StackConfig. The caller's environment is also kept whole (StackConfig.child_env), to be
passed on to the processes the stack starts: the app reads its own settings from it
(service/config.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "docs" / "runbooks.md"

# Every port of the stack, overridable as <NAME>_PORT (EDGE_PORT, APP_PORT, ...).
DEFAULT_PORTS = {
    "edge": 5000,  # the public HTTPS API
    "edge_status": 8081,  # nginx stub_status
    "app": 8000,  # gunicorn
    "app_metrics": 9101,  # the gunicorn master's /metrics
    "redis": 6379,
    "mtail": 3903,  # edge metrics
    "nginx_exporter": 9113,
    "redis_exporter": 9121,
    "prometheus": 9090,
    "alertmanager": 9093,
    "blackbox_exporter": 9115,
    "node_exporter": 9100,
    "process_exporter": 9256,
}

REDIS_TOPOLOGIES = ("single", "cluster")
CLUSTER_NODES = 6  # three masters, each with a replica
NO_NETWORK = "0.0.0.0/32"  # TRACE_CONTEXT_TRUSTED's default: trust no one
EDGE_CACHE_MAX_SIZE = "256m"  # the edge's message cache (docker-compose.yml states it too)
# Longest path a Unix socket address holds (sockaddr_un's sun_path, with its final NUL).
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class AlertRouting:
    """Where Alertmanager sends notifications. By default nowhere: receiver "local" sends
    nothing."""

    receiver: str = "local"  # of pages and tickets: "local" or "webhook"
    page_webhook_url: str = ""
    ticket_webhook_url: str = ""
    heartbeat_receiver: str = "local"  # of the Watchdog alert's heartbeat
    heartbeat_url: str = ""
    group_wait: str = "30s"
    group_interval: str = "5m"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AlertRouting:
        """Read ALERT_*. ALERT_WEBHOOK_URL alone sends pages and tickets to one webhook; a
        receiver left unset is "webhook" where a URL is given."""
        both = env.get("ALERT_WEBHOOK_URL", "")
        pages = env.get("ALERT_PAGE_WEBHOOK_URL") or both
        tickets = env.get("ALERT_TICKET_WEBHOOK_URL") or both
        heartbeat = env.get("ALERT_HEARTBEAT_URL", "")
        default = cls()
        return cls(
            receiver=env.get("ALERT_RECEIVER")
            or ("webhook" if pages or tickets else default.receiver),
            page_webhook_url=pages,
            ticket_webhook_url=tickets,
            heartbeat_receiver=env.get("ALERT_HEARTBEAT_RECEIVER")
            or ("webhook" if heartbeat else default.heartbeat_receiver),
            heartbeat_url=heartbeat,
            group_wait=env.get("ALERT_GROUP_WAIT") or default.group_wait,
            group_interval=env.get("ALERT_GROUP_INTERVAL") or default.group_interval,
        )


@dataclass(frozen=True)
class StackConfig:
    """Ports, folders, limits and supervision of one native stack, from the environment."""

    state_dir: Path
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    # Ports of app instances and cluster nodes after the first, where set one by one
    # (APP_<k>_PORT, APP_<k>_METRICS_PORT, REDIS_<k>_PORT): variable -> port.
    numbered_ports: Mapping[str, int] = field(default_factory=dict)
    rate_limit_rps: int = 100
    # Requests nginx has at the app at once, per instance; past it, 503 (see nginx.conf).
    edge_app_max_conns: int = 32
    rate_limit_burst: int = 200
    trace_context_trusted: str = NO_NETWORK
    edge_cache_max_size: str = EDGE_CACHE_MAX_SIZE
    scrape_interval: str | None = None  # None: as in prometheus.yml
    app_instances: int = 1
    redis_topology: str = "single"  # or "cluster": three masters, each with a replica
    alert_resend_delay: str = "1m"
    alerts: AlertRouting = field(default_factory=AlertRouting)
    runbook_base_url: str = RUNBOOKS.as_uri()  # where notifications' runbook links point
    # make run's supervision (native/supervise.py): each component's log rotates at
    # log_file_bytes and keeps log_files files; a component that dies restart_limit times
    # within restart_window seconds is given up on.
    edge_metrics_log_bytes: int = 64 * 1024 * 1024  # emptied past this (mtail has read it)
    log_file_bytes: int = 10 * 1024 * 1024
    log_files: int = 5
    restart_limit: int = 5
    restart_window: int = 60
    # The caller's environment, passed on to every process (not read here but by them).
    child_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        """Read the settings from `env` (by default this process's environment); every one
        is optional, and an empty value means its default."""
        if env is None:
            env = os.environ
        default = cls(state_dir=ROOT / ".state")
        ports = {
            name: _whole(env, f"{name.upper()}_PORT", port, least=1)
            for name, port in DEFAULT_PORTS.items()
        }
        app_instances = max(1, _whole(env, "APP_INSTANCES", default.app_instances))
        return cls(
            state_dir=Path(env.get("STATE_DIR") or default.state_dir).resolve(),
            ports=ports,
            numbered_ports=_numbered_ports(env, app_instances),
            rate_limit_rps=_whole(env, "RATE_LIMIT_RPS", default.rate_limit_rps),
            rate_limit_burst=_whole(env, "RATE_LIMIT_BURST", default.rate_limit_burst),
            # split over two server lines, and nginx reads max_conns=0 as no limit
            edge_app_max_conns=_whole(
                env, "EDGE_APP_MAX_CONNS", default.edge_app_max_conns, least=2
            ),
            trace_context_trusted=env.get("TRACE_CONTEXT_TRUSTED") or default.trace_context_trusted,
            edge_cache_max_size=env.get("EDGE_CACHE_MAX_SIZE") or default.edge_cache_max_size,
            scrape_interval=env.get("SCRAPE_INTERVAL") or default.scrape_interval,
            app_instances=app_instances,
            redis_topology=_topology(env.get("REDIS_TOPOLOGY") or default.redis_topology),
            alert_resend_delay=env.get("ALERT_RESEND_DELAY") or default.alert_resend_delay,
            alerts=AlertRouting.from_env(env),
            runbook_base_url=env.get("RUNBOOK_BASE_URL") or default.runbook_base_url,
            edge_metrics_log_bytes=_whole(
                env, "EDGE_METRICS_LOG_BYTES", default.edge_metrics_log_bytes
            ),
            log_file_bytes=_whole(env, "LOG_FILE_BYTES", default.log_file_bytes),
            log_files=_whole(env, "LOG_FILES", default.log_files),
            restart_limit=_whole(env, "RESTART_LIMIT", default.restart_limit),
            restart_window=_whole(env, "RESTART_WINDOW_SECONDS", default.restart_window),
            child_env=dict(env),
        )

    def address(self, name: str) -> str:
        """127.0.0.1:<port> of one part of the stack."""
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def edge_port(self) -> int:
        """The public HTTPS port."""
        return self.ports["edge"]

    @property
    def app_settings(self) -> Settings:
        """The app's settings (limits, timeouts) as the caller's environment gives them."""
        return Settings.from_env(self.child_env)

    @property
    def redis_password_file(self) -> Path:
        """The native stack's Redis password, made once and kept with the data."""
        return self.state_dir / "redis" / "password"

    def app_port(self, instance: int, kind: str = "app") -> int:
        """The port of app instance 1, 2, ... (kind "app" or "app_metrics"): instance 1 uses
        APP_PORT / APP_METRICS_PORT, instance k APP_<k>_PORT / APP_<k>_METRICS_PORT (by
        default the next ports up)."""
        return self._nth_port(kind, _app_port_variable(instance, kind), instance)

    def redis_node_port(self, node: int) -> int:
        """The port of cluster node 1..6: node 1 uses REDIS_PORT, node k REDIS_<k>_PORT (by
        default the next ports up). Each node's cluster bus is its port + 10000."""
        return self._nth_port("redis", _redis_port_variable(node), node)

    def _nth_port(self, port: str, variable: str, n: int) -> int:
        """Instance n's port: the named port for the first, else `variable`'s, by default
        the next ports up."""
        if n == 1:
            return self.ports[port]
        if variable in self.numbered_ports:
            return self.numbered_ports[variable]
        return self.ports[port] + n - 1


STARTED_WITH = "make-run-env.json"  # in the state folder: make run's environment


def save_started_with(cfg: StackConfig) -> Path:
    """Keep the environment make run started with, for `make reload`: it renders the configs
    again with these settings, not with whatever the shell it runs in has (an ALERT_*
    webhook missing there would otherwise stop paging). Readable by its owner only: it may
    hold a secret, like the services' run scripts."""
    path = cfg.state_dir / STARTED_WITH
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(dict(cfg.child_env), out)
    return path


def started_with(state_dir: Path) -> StackConfig | None:
    """The settings the make run on this state folder started with; None if none did."""
    try:
        env = json.loads((state_dir / STARTED_WITH).read_text())
    except FileNotFoundError:
        return None
    return StackConfig.from_env(env)


def _topology(name: str) -> str:
    if name not in REDIS_TOPOLOGIES:
        raise ValueError(f"REDIS_TOPOLOGY must be one of {', '.join(REDIS_TOPOLOGIES)}")
    return name


def _app_port_variable(instance: int, kind: str) -> str:
    return f"APP_{instance}_{'METRICS_' if kind == 'app_metrics' else ''}PORT"


def _redis_port_variable(node: int) -> str:
    return f"REDIS_{node}_PORT"


def _whole(env: Mapping[str, str], name: str, default: int, least: int | None = None) -> int:
    """A whole-number setting: empty means the default; a bad value stops the start with a
    line naming the variable, not a traceback."""
    raw = env.get(name) or ""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or (least is not None and value < least):
        bound = f" of at least {least}" if least is not None else ""
        raise SystemExit(f"{name}={raw!r}: a whole number{bound}")
    return value


def _numbered_ports(env: Mapping[str, str], app_instances: int) -> dict[str, int]:
    """The ports set one by one for app instances 2, 3, ... and cluster nodes 2..6."""
    apps = [
        _app_port_variable(i, kind)
        for i in range(2, app_instances + 1)
        for kind in ("app", "app_metrics")
    ]
    nodes = [_redis_port_variable(n) for n in range(2, CLUSTER_NODES + 1)]
    return {name: _whole(env, name, 0, least=1) for name in [*apps, *nodes] if env.get(name)}


def app_addresses(cfg: StackConfig, kind: str = "app") -> list[str]:
    """host:port of every app instance (kind "app") or of its metrics (kind "app_metrics")."""
    return [f"127.0.0.1:{cfg.app_port(i, kind)}" for i in range(1, cfg.app_instances + 1)]


def app_socket(cfg: StackConfig, instance: int) -> Path | None:
    """The Unix socket app instance k listens on beside its TCP port, for nginx: cheaper per
    request than loopback TCP (docs/performance.md). None if the state folder's path is too
    long for one: nginx then uses the TCP port."""
    path = cfg.state_dir / "run" / f"app-{instance}.sock"
    return path if len(str(path).encode()) <= MAX_SOCKET_PATH else None


def redis_addresses(cfg: StackConfig) -> list[str]:
    """host:port of every Redis instance: the one, or each cluster node."""
    nodes = 1 if cfg.redis_topology == "single" else CLUSTER_NODES
    return [f"127.0.0.1:{cfg.redis_node_port(n)}" for n in range(1, nodes + 1)]
