"""The config files of nginx, Prometheus, Alertmanager and the blackbox exporter, rendered
for a native stack from the same shared files docker compose uses: only addresses, ports
and folders differ."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from native.edge_cache import edge_cache_dir
from native.settings import ROOT, StackConfig, app_addresses, app_socket, redis_addresses

CERTIFICATE = ROOT / "localhost.crt"
NGINX_TEMPLATE = ROOT / "nginx" / "nginx.conf.template"
NGINX_TEMPLATE_VARS = (
    "EDGE_LISTEN",
    "APP_UPSTREAM_SERVERS",
    "TLS_CERT",
    "TLS_KEY",
    "NGINX_RUN_DIR",
    "NGINX_USER",
    "MAX_BODY_BYTES",
    "RATE_LIMIT_RPS",
    "RATE_LIMIT_BURST",
    "EDGE_STATUS_LISTEN",
    "EDGE_METRICS_LOG",
    "TRACE_CONTEXT_TRUSTED",
    "EDGE_CACHE_DIR",
    "EDGE_CACHE_MAX_SIZE",
)
MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
ALERTMANAGER_TEMPLATE = MONITORING / "alertmanager" / "alertmanager.yml.template"
ALERTMANAGER_TEMPLATE_VARS = (
    "ALERT_RECEIVER",
    "ALERT_PAGE_WEBHOOK_URL",
    "ALERT_TICKET_WEBHOOK_URL",
    "ALERT_HEARTBEAT_RECEIVER",
    "ALERT_HEARTBEAT_URL",
    "ALERT_GROUP_WAIT",
    "ALERT_GROUP_INTERVAL",
)
UNUSED_URL = "http://127.0.0.1:9/unused"  # a receiver that is never routed to needs a URL
BLACKBOX_CONFIG = MONITORING / "blackbox" / "blackbox.yml"

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


def render_template(template: Path, values: Mapping[str, str], out: Path) -> Path:
    """Fill in a shared template with envsubst, as the containers do in compose: only the
    named variables, so that nginx's own $variables stay as they are."""
    out.parent.mkdir(parents=True, exist_ok=True)
    only_ours = " ".join(f"${{{name}}}" for name in values)
    rendered = subprocess.run(
        ["envsubst", only_ours],
        input=template.read_text(),
        env={**os.environ, **values},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out.write_text(rendered)
    return out


def edge_metrics_log(cfg: StackConfig) -> Path:
    """The compact access log nginx writes and mtail reads."""
    return cfg.state_dir / "nginx" / "edge-metrics.log"


def nginx_values(cfg: StackConfig) -> dict[str, str]:
    """The values of the nginx template's variables for this stack."""
    return {
        "EDGE_LISTEN": cfg.address("edge"),
        "APP_UPSTREAM_SERVERS": upstream_servers(app_upstreams(cfg), cfg.edge_app_max_conns),
        "TLS_CERT": str(CERTIFICATE),
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
        "TRACE_CONTEXT_TRUSTED": cfg.trace_context_trusted,
        "EDGE_CACHE_DIR": str(edge_cache_dir(cfg)),
        "EDGE_CACHE_MAX_SIZE": cfg.edge_cache_max_size,
    }


def app_upstreams(cfg: StackConfig) -> list[str]:
    """Where nginx reaches each app instance: its Unix socket, or else its TCP port."""
    found = []
    for i, address in enumerate(app_addresses(cfg), start=1):
        socket = app_socket(cfg, i)
        found.append(f"unix:{socket}" if socket else address)
    return found


def upstream_servers(addresses: list[str], max_conns: int) -> str:
    """nginx's server lines for the app: every address, then all again as backups, the
    instance's max_conns split between its two lines (see the upstream block in
    nginx.conf.template; nginx/start-in-container.sh writes the same in compose)."""
    primary, backup = max_conns - max_conns // 2, max_conns // 2
    lines = [f"server {a} max_conns={primary} max_fails=0;" for a in addresses]
    lines += [f"server {a} max_conns={backup} max_fails=0 backup;" for a in addresses]
    return " ".join(lines)


def nginx_config(cfg: StackConfig) -> Path:
    """Where nginx reads its config: rendered at start, replaced by `make reload`."""
    return cfg.state_dir / "nginx" / "nginx.conf"


def render_nginx(cfg: StackConfig, out: Path | None = None) -> Path:
    """The shared nginx template, filled in for this stack (into `out`: a candidate that
    `make reload` checks before it replaces the config in use)."""
    values = nginx_values(cfg)
    assert set(values) == set(NGINX_TEMPLATE_VARS)
    return render_template(NGINX_TEMPLATE, values, out or nginx_config(cfg))


def alertmanager_values(cfg: StackConfig) -> dict[str, str]:
    """The values of the Alertmanager template's variables for this stack."""
    alerts = cfg.alerts
    return {
        "ALERT_RECEIVER": alerts.receiver,
        "ALERT_PAGE_WEBHOOK_URL": alerts.page_webhook_url or UNUSED_URL,
        "ALERT_TICKET_WEBHOOK_URL": alerts.ticket_webhook_url or UNUSED_URL,
        "ALERT_HEARTBEAT_RECEIVER": alerts.heartbeat_receiver,
        "ALERT_HEARTBEAT_URL": alerts.heartbeat_url or UNUSED_URL,
        "ALERT_GROUP_WAIT": alerts.group_wait,
        "ALERT_GROUP_INTERVAL": alerts.group_interval,
    }


def alertmanager_config(cfg: StackConfig) -> Path:
    """Where Alertmanager reads its config."""
    return cfg.state_dir / "alertmanager" / "alertmanager.yml"


def render_alertmanager(cfg: StackConfig, out: Path | None = None) -> Path:
    """The shared Alertmanager template, filled in for this stack (into `out`: see
    render_nginx)."""
    out = out or alertmanager_config(cfg)
    return render_template(ALERTMANAGER_TEMPLATE, alertmanager_values(cfg), out)


def render_blackbox(cfg: StackConfig) -> Path:
    """The shared blackbox config, trusting the repository's certificate."""
    config = yaml.safe_load(BLACKBOX_CONFIG.read_text())
    for module in config["modules"].values():
        tls = module["http"].get("tls_config", {})
        if "ca_file" in tls:
            tls["ca_file"] = str(CERTIFICATE)
    out = cfg.state_dir / "blackbox" / "blackbox.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def prometheus_config(cfg: StackConfig) -> Path:
    """Where Prometheus reads its config."""
    return cfg.state_dir / "prometheus" / "prometheus.yml"


def render_prometheus(cfg: StackConfig, out: Path | None = None) -> Path:
    """The shared prometheus.yml with each job's targets pointed at this stack's ports
    (into `out`: see render_nginx)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for job in config["scrape_configs"]:
        point_job_at(job, cfg)
    for alertmanagers in config["alerting"]["alertmanagers"]:
        alertmanagers["static_configs"] = [{"targets": [cfg.address("alertmanager")]}]
    config["rule_files"] = [
        str(PROMETHEUS_CONFIG.parent / pattern) for pattern in config.get("rule_files", [])
    ]
    # The compose file expands ${RUNBOOK_BASE_URL} itself (--enable-feature=expand-external-labels).
    config["global"]["external_labels"]["runbook_base_url"] = cfg.runbook_base_url
    if cfg.scrape_interval:
        config["global"]["scrape_interval"] = cfg.scrape_interval
        config["global"]["evaluation_interval"] = cfg.scrape_interval
    path = out or prometheus_config(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Derived from monitoring/prometheus/prometheus.yml by native/configs.py.\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def point_job_at(job: dict[str, Any], cfg: StackConfig) -> None:
    """Replace a scrape job's targets (compose's service names) with this stack's ports."""
    for sd in ("dns_sd_configs", "static_configs", "file_sd_configs"):
        job.pop(sd, None)
    name = job["job_name"]
    address = cfg.address(PROMETHEUS_JOB_PORTS[name])
    if name == "app":
        targets = app_addresses(cfg, "app_metrics")
    elif name == "app-ready":
        targets = app_addresses(cfg)
    elif name == "redis":
        targets = [f"redis://{a}" for a in redis_addresses(cfg)]
    elif name == "blackbox":
        # The probed URL is the target; the exporter's address is set by relabelling.
        targets = [f"https://localhost:{cfg.edge_port}/healthz"]
    else:
        targets = [address]
    job["static_configs"] = [{"targets": targets}]
    if name in ("app-ready", "redis", "blackbox"):
        point_relabelling_at(job, address)


def point_relabelling_at(job: dict[str, Any], address: str) -> None:
    """A multi-target job (blackbox, app-ready, redis): its target is a parameter, and the
    exporter that serves it, this address."""
    for relabel in job["relabel_configs"]:
        if relabel.get("target_label") == "__address__":
            relabel["replacement"] = address
