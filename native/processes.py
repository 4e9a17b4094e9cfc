"""What the native stack runs: each process's command line and environment, in start order.

Used by `make run` (native/run.py, under s6) and by the tests (tests/harness.py, under
mirakuru), so both start exactly the same processes from the same config files as docker
compose.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from native.configs import (
    MONITORING,
    edge_metrics_log,
    render_alertmanager,
    render_blackbox,
    render_nginx,
    render_prometheus,
)
from native.redis_files import (
    redis_auth_config,
    redis_data_dir,
    redis_instance_config,
    redis_password,
)
from native.settings import CLUSTER_NODES, ROOT, StackConfig, app_socket

REDIS_EXPORTER_TIMEOUT = "3s"  # in docker-compose.yml too


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


def prepare_stack(cfg: StackConfig) -> list[Process]:
    """Write the state folder's config files and the Redis password; return the processes
    to start, in order."""
    return service_processes(cfg) + monitoring_processes(cfg)


def service_processes(cfg: StackConfig) -> list[Process]:
    """Redis, the app instances and nginx: what serves the API."""
    redis_auth_conf = redis_auth_config(cfg)
    (cfg.state_dir / "run").mkdir(parents=True, exist_ok=True)  # the app's Unix sockets
    nginx_conf = render_nginx(cfg)
    return [
        *redis_processes(cfg, redis_auth_conf),
        *[app_process(cfg, i) for i in range(1, cfg.app_instances + 1)],
        Process(
            name="nginx",
            argv=["nginx", "-p", str(nginx_conf.parent), "-c", str(nginx_conf), "-e", "stderr"],
            env=dict(cfg.child_env),
            port=cfg.ports["edge"],
            stop_signal="QUIT",  # graceful: finish the requests in flight
        ),
    ]


def app_process(cfg: StackConfig, instance: int) -> Process:
    """App instance 1, 2, ...: gunicorn (service/serve.py)."""
    return Process(
        name="app" if instance == 1 else f"app-{instance}",
        argv=[sys.executable, "-m", "service.serve", "--chdir", str(ROOT)],
        env=app_env(cfg, instance),
        port=cfg.app_port(instance),
        ready_path="/healthz",
    )


def app_env(cfg: StackConfig, instance: int = 1) -> dict[str, str]:
    """An app instance's environment: the caller's, pointed at this stack's Redis."""
    cluster = cfg.redis_topology == "cluster"
    return {
        "GIT_REVISION": git_revision(),
        **cfg.child_env,
        "APP_BIND": f"127.0.0.1:{cfg.app_port(instance)}",
        "APP_SOCKET": str(app_socket(cfg, instance) or ""),
        "METRICS_BIND": f"127.0.0.1:{cfg.app_port(instance, 'app_metrics')}",
        # A cluster client learns every node from the first.
        "REDIS_URL": f"redis://{cfg.address('redis')}/0",
        **({"REDIS_MODE": "cluster"} if cluster else {}),  # else the caller's, if any
        "REDIS_PASSWORD_FILE": str(cfg.redis_password_file),
        "PYTHONUNBUFFERED": "1",
        "APP_INSTANCES": str(cfg.app_instances),  # exported: AppInstancesMissing compares
    }


def git_revision() -> str:
    """The checked-out commit, for the build_info metric; "unknown" outside a git clone."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def redis_processes(cfg: StackConfig, auth_conf: Path) -> list[Process]:
    """One Redis, or the six nodes of a cluster and the job that joins them."""
    if cfg.redis_topology == "single":
        return [redis_process(cfg, "redis", cfg.ports["redis"], auth_conf)]
    cluster_mode = ("--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
    nodes = []
    for n in range(1, CLUSTER_NODES + 1):
        name = "redis" if n == 1 else f"redis-{n}"
        nodes.append(redis_process(cfg, name, cfg.redis_node_port(n), auth_conf, *cluster_mode))
    join = Process(
        name="redis-cluster",  # the same join as compose's
        argv=[
            "sh",
            str(ROOT / "redis" / "cluster-join.sh"),
            *[f"127.0.0.1:{p.port}" for p in nodes],
        ],
        env={**cfg.child_env, "REDIS_PASSWORD_FILE": str(cfg.redis_password_file)},
        port=None,
        job=True,
    )
    return [*nodes, join]


def redis_process(cfg: StackConfig, name: str, port: int, auth_conf: Path, *extra: str) -> Process:
    """A redis-server on the shared redis.conf, its data in a folder of its own."""
    folder = redis_data_dir(cfg, name)
    folder.mkdir(parents=True, exist_ok=True)
    return Process(
        name=name,
        argv=[
            "redis-server",
            str(redis_instance_config(folder)),
            *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)),
            *("--include", str(auth_conf), *extra),
        ],
        env=dict(cfg.child_env),
        port=port,
    )


def textfile_dir(cfg: StackConfig) -> Path:
    """Metric files the node exporter serves (its textfile collector): make run's supervisor
    writes its restart counts there (native/finish.py)."""
    folder = cfg.state_dir / "node-exporter" / "textfile"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def monitoring_processes(cfg: StackConfig) -> list[Process]:
    """mtail, the exporters, Alertmanager and Prometheus: what watches the service."""
    return [
        mtail(cfg),
        edge_log_trim(cfg),
        nginx_exporter(cfg),
        redis_exporter(cfg),
        blackbox_exporter(cfg),
        node_exporter(cfg),
        process_exporter(cfg),
        alertmanager(cfg),
        prometheus(cfg),
    ]


def metrics_server(
    cfg: StackConfig,
    part: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    stop_exit_code: int = 0,
) -> Process:
    """A process serving /metrics on its part's port (mtail and the exporters), named after the
    part: nginx_exporter runs as nginx-exporter."""
    return Process(
        name=part.replace("_", "-"),
        argv=argv,
        env={**cfg.child_env, **(env or {})},
        port=cfg.ports[part],
        ready_path="/metrics",
        stop_exit_code=stop_exit_code,
    )


def mtail(cfg: StackConfig) -> Process:
    """The edge's metrics, from nginx's compact access log."""
    return metrics_server(
        cfg,
        "mtail",
        [
            "mtail",
            *("--progs", str(MONITORING / "mtail")),
            *("--logs", str(edge_metrics_log(cfg))),
            *("--address", "127.0.0.1", "--port", str(cfg.ports["mtail"])),
            "--emit_prog_label=false",
            "--logtostderr",
        ],
    )


def edge_log_trim(cfg: StackConfig) -> Process:
    """nginx's edge-metrics log, emptied past a size."""
    return Process(
        name="edge-log-trim",
        argv=[
            "sh",
            str(MONITORING / "edge-log" / "trim.sh"),
            str(edge_metrics_log(cfg)),
            str(cfg.edge_metrics_log_bytes),
        ],
        env=dict(cfg.child_env),
        port=None,
    )


def nginx_exporter(cfg: StackConfig) -> Process:
    """nginx's connection metrics, from its stub_status."""
    return metrics_server(
        cfg,
        "nginx_exporter",
        [
            "prometheus-nginx-exporter",
            *("-nginx.scrape-uri", f"http://{cfg.address('edge_status')}/stub_status"),
            # It exits if nginx does not answer at start; nginx may start after it.
            *("-nginx.retries", "30", "-nginx.retry-interval", "1s"),
            *("-web.listen-address", cfg.address("nginx_exporter")),
        ],
        stop_exit_code=1,  # 0.11 logs a clean shutdown, then exits 1 all the same
    )


def redis_exporter(cfg: StackConfig) -> Process:
    """Redis's metrics, from the first instance or, through /scrape, any of them."""
    return metrics_server(
        cfg,
        "redis_exporter",
        [
            "prometheus-redis-exporter",
            *("-redis.addr", f"redis://{cfg.address('redis')}"),
            # A frozen Redis must read as redis_up 0 (RedisDown), not as a scrape that times
            # out: give up on it well within Prometheus' scrape timeout.
            *("-connection-timeout", REDIS_EXPORTER_TIMEOUT),
            *("-web.listen-address", cfg.address("redis_exporter")),
        ],
        # Read from its environment: a command line is visible to every user.
        env={"REDIS_PASSWORD": redis_password(cfg)},
    )


def blackbox_exporter(cfg: StackConfig) -> Process:
    """Probes of the edge's /healthz and each app instance's /readyz."""
    return metrics_server(
        cfg,
        "blackbox_exporter",
        [
            "prometheus-blackbox-exporter",
            f"--config.file={render_blackbox(cfg)}",
            f"--web.listen-address={cfg.address('blackbox_exporter')}",
        ],
    )


def node_exporter(cfg: StackConfig) -> Process:
    """The host's metrics, and make run's restart counts (textfile_dir)."""
    return metrics_server(
        cfg,
        "node_exporter",
        [
            "prometheus-node-exporter",
            "--no-collector.systemd",
            f"--collector.textfile.directory={textfile_dir(cfg)}",
            f"--web.listen-address={cfg.address('node_exporter')}",
        ],
    )


def process_exporter(cfg: StackConfig) -> Process:
    """CPU and memory per component."""
    return metrics_server(
        cfg,
        "process_exporter",
        [
            "prometheus-process-exporter",
            *("-config.path", str(MONITORING / "process-exporter" / "process-exporter.yml")),
            *("-web.listen-address", cfg.address("process_exporter")),
        ],
    )


def alertmanager(cfg: StackConfig) -> Process:
    """Routes Prometheus's alerts to the receivers (AlertRouting)."""
    conf = render_alertmanager(cfg)
    return Process(
        name="alertmanager",
        argv=[
            "prometheus-alertmanager",
            f"--config.file={conf}",
            f"--storage.path={conf.parent / 'data'}",
            f"--web.listen-address={cfg.address('alertmanager')}",
            f"--web.external-url=http://localhost:{cfg.ports['alertmanager']}",
            "--cluster.listen-address=",  # a single instance: no gossip port
        ],
        env=dict(cfg.child_env),
        port=cfg.ports["alertmanager"],
        ready_path="/-/ready",
    )


def prometheus(cfg: StackConfig) -> Process:
    """Scrapes every part of the stack and evaluates the SLO and alert rules."""
    conf = render_prometheus(cfg)
    return Process(
        name="prometheus",
        argv=[
            "prometheus",
            f"--config.file={conf}",
            f"--storage.tsdb.path={conf.parent / 'data'}",
            "--storage.tsdb.retention.time=35d",  # the longest SLO window is 30 days
            f"--rules.alert.resend-delay={cfg.alert_resend_delay}",
            # Links in notifications (the alert's graph) lead here.
            f"--web.external-url=http://localhost:{cfg.ports['prometheus']}",
            f"--web.listen-address={cfg.address('prometheus')}",
        ],
        env=dict(cfg.child_env),
        port=cfg.ports["prometheus"],
        ready_path="/-/ready",
    )
