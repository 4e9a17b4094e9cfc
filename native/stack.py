"""What the native stack runs: each process's command line and its rendered config files.

Used by `make run` (native/run.py, under s6) and by the tests (under mirakuru), so both
start exactly the same processes from the same config files as docker compose.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "nginx" / "nginx.conf.template"
NGINX_TEMPLATE_VARS = (
    "EDGE_LISTEN", "APP_UPSTREAM_SERVERS", "APP_BACKEND", "APP_RESOLVER", "TLS_CERT",
    "TLS_KEY", "NGINX_RUN_DIR", "NGINX_USER", "MAX_BODY_BYTES", "RATE_LIMIT_RPS",
    "RATE_LIMIT_BURST", "EDGE_STATUS_LISTEN", "EDGE_METRICS_LOG", "TRACE_CONTEXT_TRUSTED",
    "EDGE_CACHE_DIR", "EDGE_CACHE_MAX_SIZE",
)  # fmt: skip
NO_NETWORK = "0.0.0.0/32"  # TRACE_CONTEXT_TRUSTED's default: trust no one
EDGE_CACHE_MAX_SIZE = "256m"  # the edge's message cache on disk (docker-compose.yml too)
MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
ALERTMANAGER_TEMPLATE = MONITORING / "alertmanager" / "alertmanager.yml.template"
ALERTMANAGER_TEMPLATE_VARS = (
    "ALERT_RECEIVER", "ALERT_PAGE_WEBHOOK_URL", "ALERT_TICKET_WEBHOOK_URL",
    "ALERT_HEARTBEAT_RECEIVER", "ALERT_HEARTBEAT_URL", "ALERT_GROUP_WAIT", "ALERT_GROUP_INTERVAL",
)  # fmt: skip
UNUSED_URL = "http://127.0.0.1:9/unused"  # a receiver that is never routed to needs a URL
RUNBOOKS = ROOT / "docs" / "runbooks.md"
BLACKBOX_CONFIG = MONITORING / "blackbox" / "blackbox.yml"
REDIS_EXPORTER_TIMEOUT = "3s"  # in docker-compose.yml too

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
# Which port each Prometheus job scrapes natively (compose uses service names instead).
PROMETHEUS_JOB_PORTS = {
    "app": "app_metrics",
    "edge": "mtail",
    "nginx": "nginx_exporter",
    "redis": "redis_exporter",  # through its /scrape, one target per Redis (see below)
    "redis-exporter": "redis_exporter",
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
    "blackbox": "blackbox_exporter",
    "app-ready": "blackbox_exporter",  # probes each app instance's /readyz
    "node": "node_exporter",
    "components": "process_exporter",
}


@dataclass(frozen=True)
class StackConfig:
    """Ports, folders and edge limits of one native stack, from the environment."""

    state_dir: Path
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    rate_limit_rps: int = 100
    rate_limit_burst: int = 200
    scrape_interval: str | None = None  # None: as in prometheus.yml
    app_instances: int = 1
    redis_topology: str = "single"  # or "cluster": three masters, each with a replica
    alert_resend_delay: str = "1m"
    # make run's supervision (native/supervise.py): each component's log rotates at
    # log_file_bytes and keeps log_files files; a component that dies restart_limit times
    # within restart_window seconds is given up on.
    edge_metrics_log_bytes: int = 64 * 1024 * 1024  # emptied past this (mtail has read it)
    log_file_bytes: int = 10 * 1024 * 1024
    log_files: int = 5
    restart_limit: int = 5
    restart_window: int = 60
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        """Read <NAME>_PORT, STATE_DIR, RATE_LIMIT_*, SCRAPE_INTERVAL, EDGE_METRICS_LOG_BYTES,
        LOG_FILE_BYTES, LOG_FILES, RESTART_LIMIT and RESTART_WINDOW_SECONDS (all optional)."""
        env = dict(os.environ if env is None else env)
        d = cls(state_dir=ROOT / ".state")
        ports = {
            name: int(env.get(f"{name.upper()}_PORT") or default)
            for name, default in DEFAULT_PORTS.items()
        }
        return cls(
            state_dir=Path(env.get("STATE_DIR") or d.state_dir).resolve(),
            ports=ports,
            rate_limit_rps=int(env.get("RATE_LIMIT_RPS") or d.rate_limit_rps),
            rate_limit_burst=int(env.get("RATE_LIMIT_BURST") or d.rate_limit_burst),
            scrape_interval=env.get("SCRAPE_INTERVAL") or None,
            app_instances=max(1, int(env.get("APP_INSTANCES") or 1)),
            redis_topology=_topology(env.get("REDIS_TOPOLOGY") or d.redis_topology),
            alert_resend_delay=env.get("ALERT_RESEND_DELAY") or d.alert_resend_delay,
            edge_metrics_log_bytes=int(
                env.get("EDGE_METRICS_LOG_BYTES") or d.edge_metrics_log_bytes
            ),
            log_file_bytes=int(env.get("LOG_FILE_BYTES") or d.log_file_bytes),
            log_files=int(env.get("LOG_FILES") or d.log_files),
            restart_limit=int(env.get("RESTART_LIMIT") or d.restart_limit),
            restart_window=int(env.get("RESTART_WINDOW_SECONDS") or d.restart_window),
            env=env,
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
        return Settings.from_env(self.env)

    @property
    def redis_password_file(self) -> Path:
        """The native stack's Redis password, made once and kept with the data."""
        return self.state_dir / "redis" / "password"

    def app_port(self, instance: int, kind: str = "app") -> int:
        """The port of app instance 1, 2, ... (kind "app" or "app_metrics"): instance 1 uses
        APP_PORT / APP_METRICS_PORT, instance k APP_<k>_PORT / APP_<k>_METRICS_PORT (by
        default the next ports up)."""
        name = f"APP_{instance}_{'METRICS_' if kind == 'app_metrics' else ''}PORT"
        return self._nth_port(kind, name, instance)

    def redis_node_port(self, node: int) -> int:
        """The port of cluster node 1..6: node 1 uses REDIS_PORT, node k REDIS_<k>_PORT (by
        default the next ports up). Each node's cluster bus is its port + 10000."""
        return self._nth_port("redis", f"REDIS_{node}_PORT", node)

    def _nth_port(self, port: str, variable: str, n: int) -> int:
        """Instance n's port: the named port for the first, else `variable`, by default the
        next ports up."""
        if n == 1:
            return self.ports[port]
        return int(self.env.get(variable) or self.ports[port] + n - 1)

    def app_env(self, instance: int = 1) -> dict[str, str]:
        """An app instance's environment: the caller's, pointed at this stack's Redis."""
        cluster = self.redis_topology == "cluster"
        return {
            "GIT_REVISION": git_revision(),
            **self.env,
            "APP_BIND": f"127.0.0.1:{self.app_port(instance)}",
            "APP_SOCKET": str(app_socket(self, instance) or ""),
            "METRICS_BIND": f"127.0.0.1:{self.app_port(instance, 'app_metrics')}",
            # A cluster client learns every node from the first.
            "REDIS_URL": f"redis://{self.address('redis')}/0",
            **({"REDIS_MODE": "cluster"} if cluster else {}),  # else the caller's, if any
            "REDIS_PASSWORD_FILE": str(self.redis_password_file),
            "PYTHONUNBUFFERED": "1",
        }


REDIS_TOPOLOGIES = ("single", "cluster")
CLUSTER_NODES = 6  # three masters, each with a replica


def _topology(name: str) -> str:
    if name not in REDIS_TOPOLOGIES:
        raise ValueError(f"REDIS_TOPOLOGY must be one of {', '.join(REDIS_TOPOLOGIES)}")
    return name


@dataclass(frozen=True)
class Process:
    """One long-running process of the stack and how to tell that it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int | None  # None: nothing to wait for (a process that only does a job)
    ready_path: str | None = None  # HTTP path answering 200 when ready; None: port open
    stop_exit_code: int = 0  # what it exits with after its stop signal
    stop_signal: str = "TERM"  # what asks it to stop gracefully
    job: bool = False  # runs once to its end (the cluster join), rather than serving


def git_revision() -> str:
    """The checked-out commit, for the build_info metric; "unknown" outside a git clone."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def edge_metrics_log(cfg: StackConfig) -> Path:
    """The compact access log nginx writes and mtail reads."""
    return cfg.state_dir / "nginx" / "edge-metrics.log"


def textfile_dir(cfg: StackConfig) -> Path:
    """Metric files the node exporter serves (its textfile collector)."""
    folder = cfg.state_dir / "node-exporter" / "textfile"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def nginx_values(cfg: StackConfig) -> dict[str, str]:
    """The values of the nginx template's variables for this stack."""
    return {
        "EDGE_LISTEN": cfg.address("edge"),
        "APP_UPSTREAM_SERVERS": upstream_servers(app_upstreams(cfg)),
        "APP_BACKEND": "app",  # the upstream group: fixed addresses, no resolver
        "APP_RESOLVER": "",
        "TLS_CERT": str(ROOT / "localhost.crt"),
        "TLS_KEY": str(ROOT / "nginx" / "localhost.key"),
        "NGINX_RUN_DIR": str(cfg.state_dir / "nginx"),
        # Natively every process runs as whoever ran the stack; nginx would otherwise switch
        # its workers to "nobody", who may not reach a state folder under a private home.
        "NGINX_USER": pwd.getpwuid(os.geteuid()).pw_name,
        "MAX_BODY_BYTES": str(cfg.app_settings.max_body_bytes),
        "RATE_LIMIT_RPS": str(cfg.rate_limit_rps),
        "RATE_LIMIT_BURST": str(cfg.rate_limit_burst),
        "EDGE_STATUS_LISTEN": cfg.address("edge_status"),
        "EDGE_METRICS_LOG": str(edge_metrics_log(cfg)),
        "TRACE_CONTEXT_TRUSTED": cfg.env.get("TRACE_CONTEXT_TRUSTED") or NO_NETWORK,
        "EDGE_CACHE_DIR": str(edge_cache_dir(cfg)),
        "EDGE_CACHE_MAX_SIZE": cfg.env.get("EDGE_CACHE_MAX_SIZE") or EDGE_CACHE_MAX_SIZE,
    }


SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 (ours only: see own_edge_cache_dir)


def edge_cache_dir(cfg: StackConfig) -> Path:
    """nginx's message cache: in shared memory (tmpfs) when there is one, because writing a
    new entry to disk cost nginx 150-500 µs of CPU per first read here (ext4), a third of
    that in tmpfs (docs/performance.md). Bounded by EDGE_CACHE_MAX_SIZE; removed when make
    run stops (the messages stay in Redis). One folder per state folder."""
    if not os.access(SHARED_MEMORY, os.W_OK):
        return cfg.state_dir / "nginx" / "cache"
    tag = hashlib.sha256(str(cfg.state_dir).encode()).hexdigest()[:16]
    return SHARED_MEMORY / f"message-service-edge-cache-{tag}"


def own_edge_cache_dir(cfg: StackConfig) -> None:
    """Make the cache folder, ours alone: /dev/shm is shared, and a folder another user made
    there in advance (the name is predictable) must not receive our messages."""
    folder = edge_cache_dir(cfg)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.geteuid():
        raise RuntimeError(f"{folder} is not this user's own folder: remove it")
    folder.chmod(0o700)


def remove_edge_cache(cfg: StackConfig) -> None:
    """Free the memory the edge's cache holds (nginx has stopped)."""
    shutil.rmtree(edge_cache_dir(cfg), ignore_errors=True)


def upstream_servers(addresses: list[str]) -> str:
    """nginx's server lines for the app: every address, then all again as backups (see the
    upstream block in nginx.conf.template)."""
    lines = [f"server {a} max_fails=0;" for a in addresses]
    lines += [f"server {a} max_fails=0 backup;" for a in addresses]
    return " ".join(lines)


def render_template(template: Path, values: Mapping[str, str], out: Path) -> Path:
    """Fill in a shared template with envsubst, as the containers do in compose: only the
    named variables, so that nginx's own $variables stay as they are."""
    out.parent.mkdir(parents=True, exist_ok=True)
    only_ours = " ".join(f"${{{name}}}" for name in values)
    rendered = subprocess.run(
        ["envsubst", only_ours],
        input=template.read_text(),
        env={**os.environ, **values},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    out.write_text(rendered)
    return out


def render_nginx(cfg: StackConfig) -> Path:
    """The shared nginx template, filled in for this stack."""
    values = nginx_values(cfg)
    assert set(values) == set(NGINX_TEMPLATE_VARS)
    return render_template(NGINX_TEMPLATE, values, cfg.state_dir / "nginx" / "nginx.conf")


def alertmanager_values(cfg: StackConfig) -> dict[str, str]:
    """Alertmanager's settings: the caller's, with defaults that send nothing anywhere.
    ALERT_WEBHOOK_URL alone sends pages and tickets to one webhook."""
    env = cfg.env
    both = env.get("ALERT_WEBHOOK_URL", "")
    pages = env.get("ALERT_PAGE_WEBHOOK_URL") or both
    tickets = env.get("ALERT_TICKET_WEBHOOK_URL") or both
    heartbeat = env.get("ALERT_HEARTBEAT_URL", "")
    return {
        "ALERT_RECEIVER": env.get("ALERT_RECEIVER") or ("webhook" if pages or tickets else "local"),
        "ALERT_PAGE_WEBHOOK_URL": pages or UNUSED_URL,
        "ALERT_TICKET_WEBHOOK_URL": tickets or UNUSED_URL,
        "ALERT_HEARTBEAT_RECEIVER": env.get("ALERT_HEARTBEAT_RECEIVER")
        or ("webhook" if heartbeat else "local"),
        "ALERT_HEARTBEAT_URL": heartbeat or UNUSED_URL,
        "ALERT_GROUP_WAIT": env.get("ALERT_GROUP_WAIT") or "30s",
        "ALERT_GROUP_INTERVAL": env.get("ALERT_GROUP_INTERVAL") or "5m",
    }


def runbook_base_url(cfg: StackConfig) -> str:
    """Where notifications' runbook links point: RUNBOOK_BASE_URL, else this checkout's file."""
    return cfg.env.get("RUNBOOK_BASE_URL") or RUNBOOKS.as_uri()


def render_alertmanager(cfg: StackConfig) -> Path:
    """The shared Alertmanager template, filled in for this stack."""
    out = cfg.state_dir / "alertmanager" / "alertmanager.yml"
    return render_template(ALERTMANAGER_TEMPLATE, alertmanager_values(cfg), out)


def render_blackbox(cfg: StackConfig) -> Path:
    """The shared blackbox config, trusting the repository's certificate."""
    config = yaml.safe_load(BLACKBOX_CONFIG.read_text())
    for module in config["modules"].values():
        tls = module["http"].get("tls_config", {})
        if "ca_file" in tls:
            tls["ca_file"] = str(ROOT / "localhost.crt")
    out = cfg.state_dir / "blackbox" / "blackbox.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def render_prometheus(cfg: StackConfig) -> Path:
    """The shared prometheus.yml with each job's targets pointed at this stack's ports."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for job in config["scrape_configs"]:
        for sd in ("dns_sd_configs", "static_configs", "file_sd_configs"):
            job.pop(sd, None)
        address = cfg.address(PROMETHEUS_JOB_PORTS[job["job_name"]])
        if job["job_name"] == "app":
            job["static_configs"] = [{"targets": app_addresses(cfg, "app_metrics")}]
        elif job["job_name"] == "app-ready":
            job["static_configs"] = [{"targets": app_addresses(cfg)}]
            point_relabelling_at(job, address)
        elif job["job_name"] == "redis":
            job["static_configs"] = [{"targets": [f"redis://{a}" for a in redis_addresses(cfg)]}]
            point_relabelling_at(job, address)
        elif job["job_name"] == "blackbox":
            # The probed URL is the target; the exporter's address is set by relabelling.
            job["static_configs"] = [{"targets": [f"https://localhost:{cfg.edge_port}/healthz"]}]
            point_relabelling_at(job, address)
        else:
            job["static_configs"] = [{"targets": [address]}]
    for alertmanagers in config["alerting"]["alertmanagers"]:
        alertmanagers["static_configs"] = [{"targets": [cfg.address("alertmanager")]}]
    config["rule_files"] = [
        str(PROMETHEUS_CONFIG.parent / pattern) for pattern in config.get("rule_files", [])
    ]
    # The compose file expands ${RUNBOOK_BASE_URL} itself (--enable-feature=expand-external-labels).
    config["global"]["external_labels"]["runbook_base_url"] = runbook_base_url(cfg)
    if cfg.scrape_interval:
        config["global"]["scrape_interval"] = cfg.scrape_interval
        config["global"]["evaluation_interval"] = cfg.scrape_interval
    folder = cfg.state_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text("# Derived from monitoring/prometheus/prometheus.yml by native/stack.py.\n"
                    + yaml.safe_dump(config, sort_keys=False))  # fmt: skip
    return path


def point_relabelling_at(job: dict, address: str) -> None:
    """A multi-target job (blackbox, app-ready, redis): its target is a parameter, and the exporter
    that serves it, this address."""
    for relabel in job["relabel_configs"]:
        if relabel.get("target_label") == "__address__":
            relabel["replacement"] = address


def app_addresses(cfg: StackConfig, kind: str = "app") -> list[str]:
    """host:port of every app instance (kind "app") or of its metrics (kind "app_metrics")."""
    return [f"127.0.0.1:{cfg.app_port(i, kind)}" for i in range(1, cfg.app_instances + 1)]


# Longest path a Unix socket address holds (sockaddr_un's sun_path, with its final NUL).
MAX_SOCKET_PATH = 107


def app_socket(cfg: StackConfig, instance: int) -> Path | None:
    """The Unix socket app instance k listens on beside its TCP port, for nginx: cheaper per
    request than loopback TCP (docs/performance.md). None if the state folder's path is too
    long for one: nginx then uses the TCP port."""
    path = cfg.state_dir / "run" / f"app-{instance}.sock"
    return path if len(str(path).encode()) <= MAX_SOCKET_PATH else None


def app_upstreams(cfg: StackConfig) -> list[str]:
    """Where nginx reaches each app instance: its Unix socket, or else its TCP port."""
    found = []
    for i, address in enumerate(app_addresses(cfg), start=1):
        socket = app_socket(cfg, i)
        found.append(f"unix:{socket}" if socket else address)
    return found


def redis_addresses(cfg: StackConfig) -> list[str]:
    """host:port of every Redis instance: the one, or each cluster node."""
    nodes = 1 if cfg.redis_topology == "single" else CLUSTER_NODES
    return [f"127.0.0.1:{cfg.redis_node_port(n)}" for n in range(1, nodes + 1)]


def redis_instance_config(folder: Path, *lines: str) -> Path:
    """A config file of this Redis instance's own, including the shared redis/redis.conf:
    Redis rewrites its config file on CONFIG REWRITE (Sentinel does so on failover), and
    that must never be the repository's file."""
    conf = folder / "redis-instance.conf"
    conf.write_text("\n".join([f"include {ROOT / 'redis' / 'redis.conf'}", *lines]) + "\n")
    return conf


def redis_password(cfg: StackConfig) -> str:
    """The native stack's Redis password, made on first use, readable by this user only."""
    cfg.redis_password_file.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.redis_password_file.exists():
        cfg.redis_password_file.touch(mode=0o600)
        cfg.redis_password_file.write_text(secrets.token_urlsafe(32) + "\n")
    return cfg.redis_password_file.read_text().strip()


def redis_auth_config(cfg: StackConfig) -> Path:
    """A config file that sets the password, so that it never appears on a command line."""
    password = redis_password(cfg)  # made first, with its folder
    auth = cfg.redis_password_file.parent / "auth.conf"
    auth.touch(mode=0o600)
    # masterauth: a replica (cluster topology) logs in to its master with the same password.
    auth.write_text(f"requirepass {password}\nmasterauth {password}\n")
    return auth


def processes(cfg: StackConfig) -> list[Process]:
    """Prepare the state folder and config files; return the processes to start, in order."""
    return service_processes(cfg) + monitoring_processes(cfg)


def service_processes(cfg: StackConfig) -> list[Process]:
    """Redis, the app instances and nginx: what serves the API."""
    redis_auth_conf = redis_auth_config(cfg)
    (cfg.state_dir / "run").mkdir(parents=True, exist_ok=True)  # the app's Unix sockets
    own_edge_cache_dir(cfg)
    nginx_conf = render_nginx(cfg)
    env = dict(cfg.env)
    port = cfg.ports
    return [
        *redis_processes(cfg, redis_auth_conf),
        *[
            Process(
                name="app" if i == 1 else f"app-{i}",
                argv=[sys.executable, "-m", "service.serve", "--chdir", str(ROOT)],
                env=cfg.app_env(i),
                port=cfg.app_port(i),
                ready_path="/healthz",
            )
            for i in range(1, cfg.app_instances + 1)
        ],
        Process(
            name="nginx",
            argv=["nginx", "-p", str(nginx_conf.parent), "-c", str(nginx_conf),
                  "-e", "stderr"],
            env=env,
            port=port["edge"],
            stop_signal="QUIT",  # graceful: finish the requests in flight
        ),
    ]  # fmt: skip


def redis_data_dir(cfg: StackConfig, name: str = "redis") -> Path:
    """Where a Redis instance keeps its data. Each topology has folders of its own, so that
    switching between them never mixes (or loses) what either stored."""
    if cfg.redis_topology == "single":
        return cfg.state_dir / name
    return cfg.state_dir / "redis-cluster" / name


def redis_processes(cfg: StackConfig, auth_conf: Path) -> list[Process]:
    """One Redis, or the six nodes of a cluster and the job that joins them."""
    if cfg.redis_topology == "single":
        return [redis_process(cfg, "redis", cfg.ports["redis"], auth_conf)]
    nodes = [
        redis_process(cfg, "redis" if n == 1 else f"redis-{n}", cfg.redis_node_port(n),
                      auth_conf, "--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
        for n in range(1, CLUSTER_NODES + 1)
    ]  # fmt: skip
    join = Process(
        name="redis-cluster",  # the same join as compose's
        argv=["sh", str(ROOT / "redis" / "cluster-join.sh"),
              *[f"127.0.0.1:{p.port}" for p in nodes]],
        env={**cfg.env, "REDIS_PASSWORD_FILE": str(cfg.redis_password_file)},
        port=None,
        job=True,
    )  # fmt: skip
    return [*nodes, join]


def redis_process(cfg: StackConfig, name: str, port: int, auth_conf: Path,
                  *extra: str) -> Process:  # fmt: skip
    """A redis-server on the shared redis.conf, its data in a folder of its own."""
    folder = redis_data_dir(cfg, name)
    folder.mkdir(parents=True, exist_ok=True)
    return Process(
        name=name,
        argv=["redis-server", str(redis_instance_config(folder)),
              "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
              "--include", str(auth_conf), *extra],
        env=dict(cfg.env),
        port=port,
    )  # fmt: skip


def monitoring_processes(cfg: StackConfig) -> list[Process]:
    """mtail, the exporters, Alertmanager and Prometheus: what watches the service."""
    password = redis_password(cfg)
    prometheus_conf = render_prometheus(cfg)
    alertmanager_conf = render_alertmanager(cfg)
    blackbox_conf = render_blackbox(cfg)
    env = dict(cfg.env)
    port = cfg.ports
    return [
        Process(
            name="mtail",
            argv=["mtail", "--progs", str(ROOT / "monitoring" / "mtail"),
                  "--logs", str(edge_metrics_log(cfg)),
                  "--address", "127.0.0.1", "--port", str(port["mtail"]),
                  "--emit_prog_label=false", "--logtostderr"],
            env=env,
            port=port["mtail"],
            ready_path="/metrics",
        ),
        Process(
            name="edge-log-trim",  # nginx's edge-metrics log, emptied past a size
            argv=["sh", str(MONITORING / "edge-log" / "trim.sh"), str(edge_metrics_log(cfg)),
                  str(cfg.edge_metrics_log_bytes)],
            env=env,
            port=None,
        ),
        Process(
            name="nginx-exporter",
            argv=["prometheus-nginx-exporter",
                  "-nginx.scrape-uri", f"http://{cfg.address('edge_status')}/stub_status",
                  # It exits if nginx does not answer at start; nginx may start after it.
                  "-nginx.retries", "30", "-nginx.retry-interval", "1s",
                  "-web.listen-address", cfg.address("nginx_exporter")],
            env=env,
            port=port["nginx_exporter"],
            ready_path="/metrics",
            stop_exit_code=1,  # 0.11 logs a clean shutdown, then exits 1 all the same
        ),
        Process(
            name="redis-exporter",
            argv=["prometheus-redis-exporter",
                  "-redis.addr", f"redis://{cfg.address('redis')}",
                  # A frozen Redis must read as redis_up 0 (RedisDown), not as a scrape
                  # that times out: give up on it well within Prometheus' scrape timeout.
                  "-connection-timeout", REDIS_EXPORTER_TIMEOUT,
                  "-web.listen-address", cfg.address("redis_exporter")],
            env={**env, "REDIS_PASSWORD": password},  # read from its environment
            port=port["redis_exporter"],
            ready_path="/metrics",
        ),
        Process(
            name="blackbox-exporter",
            argv=["prometheus-blackbox-exporter", f"--config.file={blackbox_conf}",
                  f"--web.listen-address={cfg.address('blackbox_exporter')}"],
            env=env,
            port=port["blackbox_exporter"],
            ready_path="/metrics",
        ),
        Process(
            name="node-exporter",
            argv=["prometheus-node-exporter", "--no-collector.systemd",
                  # make run's supervisor writes its restart counts here (native/finish.py).
                  f"--collector.textfile.directory={textfile_dir(cfg)}",
                  f"--web.listen-address={cfg.address('node_exporter')}"],
            env=env,
            port=port["node_exporter"],
            ready_path="/metrics",
        ),
        Process(
            name="process-exporter",
            argv=["prometheus-process-exporter",
                  "-config.path", str(MONITORING / "process-exporter" / "process-exporter.yml"),
                  "-web.listen-address", cfg.address("process_exporter")],
            env=env,
            port=port["process_exporter"],
            ready_path="/metrics",
        ),
        Process(
            name="alertmanager",
            argv=["prometheus-alertmanager", f"--config.file={alertmanager_conf}",
                  f"--storage.path={alertmanager_conf.parent / 'data'}",
                  f"--web.listen-address={cfg.address('alertmanager')}",
                  f"--web.external-url=http://localhost:{port['alertmanager']}",
                  "--cluster.listen-address="],  # a single instance: no gossip port
            env=env,
            port=port["alertmanager"],
            ready_path="/-/ready",
        ),
        Process(
            name="prometheus",
            argv=["prometheus", f"--config.file={prometheus_conf}",
                  f"--storage.tsdb.path={prometheus_conf.parent / 'data'}",
                  # The longest SLO window is 30 days.
                  "--storage.tsdb.retention.time=35d",
                  f"--rules.alert.resend-delay={cfg.alert_resend_delay}",
                  # Links in notifications (the alert's graph) lead here.
                  f"--web.external-url=http://localhost:{port['prometheus']}",
                  f"--web.listen-address={cfg.address('prometheus')}"],
            env=env,
            port=port["prometheus"],
            ready_path="/-/ready",
        ),
    ]  # fmt: skip
