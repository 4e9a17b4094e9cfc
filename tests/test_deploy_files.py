"""The compose file, the Dockerfile and the shared configs agree with each other and the code.

No Docker engine runs here, so compose and the image are checked offline: the compose file
against the compose schema (make lint), the Dockerfile by hadolint (make lint), and both by
the structural checks below. The nginx template itself runs for real in the stack tests.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from native.configs import (
    ALERTMANAGER_TEMPLATE,
    ALERTMANAGER_TEMPLATE_VARS,
    BLACKBOX_CONFIG,
    NGINX_TEMPLATE,
    NGINX_TEMPLATE_VARS,
    PROMETHEUS_CONFIG,
    PROMETHEUS_JOB_PORTS,
    render_alertmanager,
    render_blackbox,
    render_nginx,
    render_prometheus,
)
from native.edge_cache import remove_edge_cache
from native.processes import REDIS_EXPORTER_TIMEOUT
from native.settings import EDGE_CACHE_MAX_SIZE, ROOT, StackConfig
from service.config import Settings
from tests.compose_cli import PASSWORDS, env_file, resolved
from tests.helpers import nginx_check

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
MONITORING_DOCKERFILE = (ROOT / "monitoring" / "Dockerfile").read_text()


def compose_default(value: str) -> str:
    """The default of a ${NAME:-default} compose value."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value))
    return match.group(1) if match else str(value)


def test_the_stack_has_the_expected_services():
    assert set(SERVICES) == {
        "redis",
        "app",
        "nginx",
        "mtail",
        "edge-log-trim",
        "nginx-exporter",
        "redis-exporter",
        "prometheus",
        "jaeger",
        "blackbox-exporter",
        "node-exporter",
        "cadvisor",
        "alertmanager",
        "grafana",
        "loadgen",
        "settings-check",  # never started: stops every compose command while a password is missing
    }


@pytest.mark.parametrize("name", sorted(set(SERVICES) - {"settings-check"}))
def test_every_service_has_a_healthcheck(name):
    service = SERVICES[name]
    from_image = "build" in service and "HEALTHCHECK" in DOCKERFILE
    assert "healthcheck" in service or from_image


def test_only_nginx_publishes_a_port_to_the_network():
    assert SERVICES["nginx"]["ports"] == ["${EDGE_PORT:-5000}:5000"]
    for name, service in SERVICES.items():
        if name != "nginx":
            assert all(p.startswith("127.0.0.1:") for p in service.get("ports", [])), name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_wait_for_health(name):
    for condition in SERVICES[name].get("depends_on", {}).values():
        assert condition == {"condition": "service_healthy"}


def test_mounted_files_are_the_repos_own():
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_redis_keeps_data_on_a_named_volume_with_the_shared_config():
    redis = SERVICES["redis"]
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-data" in COMPOSE["volumes"]
    assert "./redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]
    assert redis["command"] == ["sh", "/usr/local/bin/start-redis"]  # redis/start.sh


def test_nginx_gets_every_template_variable():
    used = set(re.findall(r"\$\{(\w+)\}", NGINX_TEMPLATE.read_text()))
    assert used == set(NGINX_TEMPLATE_VARS)
    # The start script fills APP_UPSTREAM_SERVERS in from the replicas it finds.
    assert used - {"APP_UPSTREAM_SERVERS"} <= set(SERVICES["nginx"]["environment"])


def test_compose_defaults_match_the_code():
    settings = Settings()
    native = StackConfig(state_dir=ROOT)
    app_env, nginx_env = SERVICES["app"]["environment"], SERVICES["nginx"]["environment"]
    assert compose_default(app_env["MAX_MESSAGE_BYTES"]) == str(settings.max_message_bytes)
    for env in (app_env, nginx_env):
        assert compose_default(env["MAX_BODY_BYTES"]) == str(settings.max_body_bytes)
    assert compose_default(nginx_env["RATE_LIMIT_RPS"]) == str(native.rate_limit_rps)
    assert compose_default(nginx_env["RATE_LIMIT_BURST"]) == str(native.rate_limit_burst)
    assert nginx_env["EDGE_LISTEN"] == "5000"
    assert compose_default(nginx_env["EDGE_CACHE_MAX_SIZE"]) == EDGE_CACHE_MAX_SIZE
    exporter = SERVICES["redis-exporter"]["command"][0]
    assert f"-connection-timeout {REDIS_EXPORTER_TIMEOUT} " in exporter


def test_images_are_pinned():
    built = {"message-service:local", "message-service-debian:local"}  # built from this repo
    images = [s["image"] for s in SERVICES.values() if s["image"] not in built]
    for dockerfile in (DOCKERFILE, MONITORING_DOCKERFILE):
        images += re.findall(r"^FROM (\S+)", dockerfile, re.M)
    for image in images:
        assert re.search(r":v?\d+\.\d+", image), f"{image} is not pinned to a version"


def test_dockerfile_runs_gunicorn_as_a_non_root_user():
    assert re.search(r"^USER (?!0\b|root\b)\S+", DOCKERFILE, re.M)
    assert 'CMD ["python", "-m", "service.serve"]' in DOCKERFILE  # exec form: PID 1 gets SIGTERM
    # Dependencies are installed before the code is copied, so code edits reuse that layer.
    assert DOCKERFILE.index("requirements.txt") < DOCKERFILE.index("COPY service/")


def test_native_nginx_config_is_complete_and_valid(tmp_path):
    cfg = StackConfig.from_env({"STATE_DIR": str(tmp_path)})
    conf = render_nginx(cfg)
    text = conf.read_text()
    assert "${" not in text
    try:
        check = nginx_check(conf, conf.parent)
    finally:
        remove_edge_cache(cfg)  # nginx -t makes the cache's folder, in /dev/shm
    assert check.returncode == 0, check.stderr


def apt_packages(dockerfile: str) -> dict[str, str | None]:
    """The packages a Dockerfile's apt-get install names: name -> pinned version, or None."""
    found = {}
    for block in re.findall(r"apt-get install ((?:.*\\\n)*.*)", dockerfile):
        command = block.replace("\\\n", " ").split("&&")[0]  # up to the next command
        for word in command.split():
            if not word.startswith("-"):
                name, _, version = word.partition("=")
                found[name] = version or None
    return found


def test_the_debian_image_installs_what_the_tests_run():
    """compose's nginx and monitoring tools come from the same Debian release's packages
    as the native install, so that both run the same versions."""
    release = re.search(r"^FROM debian:(\d+)[.\d]*-slim$", MONITORING_DOCKERFILE, re.M).group(1)
    here = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', Path("/etc/os-release").read_text(), re.M))
    assert (here["ID"], here["VERSION_ID"]) == ("debian", release), "tests run on another release"
    installer = (ROOT / "scripts" / "install-system-packages").read_text()
    native = set(re.findall(r"^  ([a-z0-9-]+)", installer, re.M))
    image_only = {"procps"}  # pgrep, for the load generator's healthcheck
    assert set(apt_packages(MONITORING_DOCKERFILE)) - image_only <= native


def apt_cache(*args: str) -> str:
    return subprocess.run(["apt-cache", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "monitoring/Dockerfile"])
def test_every_apt_package_in_every_dockerfile_resolves_against_the_archive(dockerfile):
    """Each package exists in Debian's archive (this machine's apt sources: the same
    release), and a version pin, if any, is one the archive still serves."""
    for name, pinned in apt_packages((ROOT / dockerfile).read_text()).items():
        policy = apt_cache("policy", name)
        assert "Candidate:" in policy and "Candidate: (none)" not in policy, name
        if pinned:
            madison = apt_cache("madison", name)
            assert f" {pinned} " in madison, f"{name}={pinned} is no longer in the archive"


def test_every_prometheus_job_has_a_native_target():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == set(PROMETHEUS_JOB_PORTS)


@pytest.mark.parametrize("render", ["repo", "native"])
def test_prometheus_config_is_valid(tmp_path, render):
    path = PROMETHEUS_CONFIG
    if render == "native":
        path = render_prometheus(StackConfig.from_env({"STATE_DIR": str(tmp_path)}))
    check = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_mtail_program_compiles():
    progs = ["--progs", str(ROOT / "monitoring" / "mtail"), "--compile_only"]
    argv = ["mtail", *progs, "--address", "127.0.0.1", "--port", "0"]
    check = subprocess.run(argv, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_app_exports_traces_to_the_trace_backend():
    env = SERVICES["app"]["environment"]
    assert compose_default(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == "http://jaeger:4318"
    assert set(SERVICES["app"]["networks"]) & set(SERVICES["jaeger"]["networks"])


def test_alertmanager_gets_every_template_variable():
    used = set(re.findall(r"\$\{(\w+)\}", ALERTMANAGER_TEMPLATE.read_text()))
    assert used == set(ALERTMANAGER_TEMPLATE_VARS)
    assert used <= set(SERVICES["alertmanager"]["environment"])
    command = SERVICES["alertmanager"]["command"][0]
    assert all(f"$${{{name}}}" in command for name in used)  # $$: compose's escape for $


ONE_HOOK = {"ALERT_WEBHOOK_URL": "https://hooks.example.com/all"}
THREE_HOOKS = {
    "ALERT_PAGE_WEBHOOK_URL": "https://pager.example.com/p",
    "ALERT_TICKET_WEBHOOK_URL": "https://tickets.example.com/t",
    "ALERT_HEARTBEAT_URL": "https://deadmansswitch.example.com/h",
}
# Where pages, tickets and the heartbeat go, in each case.
ALERTMANAGER_CASES = {
    "compose as shipped": ({}, (None, None, None)),
    "native": ({}, (None, None, None)),
    "native, one webhook": (ONE_HOOK, (ONE_HOOK["ALERT_WEBHOOK_URL"],) * 2 + (None,)),
    "native, a receiver each": (THREE_HOOKS, tuple(THREE_HOOKS.values())),
}


@pytest.mark.parametrize("where", sorted(ALERTMANAGER_CASES))
def test_alertmanager_config_is_valid_and_routes_pages_tickets_and_heartbeat(tmp_path, where):
    extra, (pages, tickets, heartbeat) = ALERTMANAGER_CASES[where]
    env = {"STATE_DIR": str(tmp_path), **extra}
    if where.startswith("compose"):  # the environment the Compose CLI resolves
        resolved_env = resolved(env=env_file(tmp_path, **PASSWORDS))["services"]["alertmanager"]
        env.update(resolved_env["environment"])
    path = render_alertmanager(StackConfig.from_env(env))
    check = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(path.read_text())
    receivers = {
        r["name"]: [c["url"] for c in r.get("webhook_configs", [])] for r in config["receivers"]
    }

    def destination(labels: str) -> str | None:
        out = subprocess.run(
            ["amtool", "config", "routes", "test", f"--config.file={path}", *labels.split()],
            capture_output=True,
            text=True,
            check=True,
        )
        (urls,) = [receivers[name] for name in out.stdout.strip().split(",")]
        return urls[0] if urls else None

    assert destination("alertname=RedisDown severity=critical") == pages
    assert destination("alertname=HostCPUHigh severity=warning") == tickets
    assert destination("alertname=Watchdog severity=none") == heartbeat


@pytest.mark.parametrize("render", ["repo", "native"])
def test_blackbox_config_is_valid(tmp_path, render):
    path = BLACKBOX_CONFIG
    if render == "native":
        path = render_blackbox(StackConfig.from_env({"STATE_DIR": str(tmp_path)}))
    argv = ["prometheus-blackbox-exporter", f"--config.file={path}", "--config.check"]
    check = subprocess.run(argv, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


CLUSTER = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())


def test_the_cluster_override_runs_six_nodes_of_the_same_redis_and_config():
    nodes = {
        n: s for n, s in CLUSTER["services"].items() if n == "redis" or re.fullmatch(r"redis-\d", n)
    }
    assert len(nodes) == 6
    base = SERVICES["redis"]
    for name, node in nodes.items():
        merged = {**base, **node} if name == "redis" else node
        assert merged["image"] == base["image"]
        assert merged["command"] == base["command"]  # redis/start.sh
        assert "./redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" in merged["volumes"]
        # node 1 apart from the single Redis's redis-data
        assert f"{'redis-1' if name == 'redis' else name}-data:/data" in merged["volumes"]
        assert merged["environment"]["REDIS_CLUSTER"] == "yes"
        assert merged.get("ports") is None  # never published, as the single Redis
    join = CLUSTER["services"]["redis-cluster"]["command"]
    assert join[2:] == [f"{n}:6379" for n in nodes]  # every node joins
    assert set(CLUSTER["volumes"]) == {f"redis-{k}-data" for k in range(1, 7)}


def test_the_cluster_override_points_the_app_at_the_cluster():
    app = CLUSTER["services"]["app"]
    assert app["environment"]["REDIS_MODE"] == "cluster"
    assert Settings.from_env(app["environment"]).redis_mode == "cluster"
    merged_services = set(SERVICES) | set(CLUSTER["services"])
    for service in CLUSTER["services"].values():
        assert set(service.get("depends_on", {})) <= merged_services


def test_a_new_revision_rebuilds_only_the_last_layer():
    """GIT_REVISION changes with every commit: declared after the dependencies, it does not
    invalidate their layer."""
    lines = DOCKERFILE.splitlines()
    arg = lines.index("ARG GIT_REVISION=unknown")
    installs = [i for i, line in enumerate(lines) if "pip install" in line]
    assert installs and arg > max(installs)


def test_scripts_and_configs_check_out_with_lf_on_every_platform():
    """On Windows, git would otherwise give the shell scripts CRLF (`set -eu\\r` fails)."""
    files = ["redis/start.sh", "redis/cluster-join.sh", "nginx/nginx.conf.template", "Dockerfile"]
    out = subprocess.run(
        ["git", "check-attr", "eol", "--", *files], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert out.splitlines() == [f"{f}: eol: lf" for f in files]


def test_every_image_is_a_supported_release():
    """No end-of-life bases: no Alpine (the old Redis image's was end of life), Jaeger v2
    (v1's all-in-one is no longer released), Grafana 12 or later (10.x and 11.x are end of
    life), cAdvisor 0.54 or later (reads Docker's containerd image store), Debian 12 at a
    point release no older than 12.15 (July 2026)."""
    images = {s.get("image", "") for s in SERVICES.values()}

    def version(prefix: str) -> tuple[int, ...]:
        (image,) = [i for i in images if i.startswith(prefix)]
        return tuple(int(n) for n in image.split(":")[1].lstrip("v").split("."))

    assert not any("alpine" in i for i in images)
    assert version("jaegertracing/jaeger:") >= (2,)
    assert version("grafana/grafana:") >= (12,)
    assert version("ghcr.io/google/cadvisor:") >= (0, 54)
    for dockerfile in (DOCKERFILE, MONITORING_DOCKERFILE):
        (point,) = re.findall(r"^FROM debian:12\.(\d+)-slim$", dockerfile, re.M)
        assert int(point) >= 15
