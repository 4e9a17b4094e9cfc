"""The compose files checked the way Docker reads them: the real Compose CLI resolves every
file combination and profile; the app boots with exactly the environment compose gives it;
nginx's config, rendered as its container renders it, passes `nginx -t`. No Docker engine
runs here, so what needs one (building images, starting containers) is not covered."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from mirakuru import HTTPExecutor, TCPExecutor

from native.configs import NGINX_TEMPLATE, NGINX_TEMPLATE_VARS, upstream_servers
from native.ports import free_port
from native.settings import ROOT
from service.config import default_workers
from tests.compose_cli import BASE, CLUSTER, FILE_SETS, PASSWORDS, PROFILES, env_file, resolved, run
from tests.harness import edge_session
from tests.helpers import eventually

DOCKERFILE = (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("files", sorted(FILE_SETS))
@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_every_file_combination_and_profile_resolves_without_warnings(tmp_path, files, profiles):
    out = run(["config", "--quiet"], FILE_SETS[files], profiles, env_file(tmp_path, **PASSWORDS))
    assert out.returncode == 0, out.stderr
    # A variable compose reads that .env.example does not set would be warned about here.
    assert out.stderr == "", out.stderr
    services = resolved(FILE_SETS[files], profiles, env_file(tmp_path, **PASSWORDS))["services"]
    assert ("loadgen" in services) == ("load" in profiles)
    assert ("redis-6" in services) == (files == "cluster")


def test_without_the_passwords_every_command_says_what_to_set(tmp_path):
    for command in (["config", "--quiet"], ["ps"], ["logs"], ["down"]):
        out = run(command, env=env_file(tmp_path))
        assert out.returncode != 0
        assert "set REDIS_PASSWORD in .env (see .env.example)" in out.stderr, out.stderr


def test_env_example_documents_every_variable_compose_reads():
    read = set()
    for path in (BASE, CLUSTER):
        # ${NAME...} that compose fills in; $${NAME} is left for the container's shell.
        read |= set(re.findall(r"(?<!\$)\$\{(\w+)", path.read_text()))
    documented = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read <= documented, read - documented
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_passwords_reach_containers_as_secrets_never_as_environment(tmp_path):
    model = resolved(FILE_SETS["cluster"], ("load",), env_file(tmp_path, **PASSWORDS))
    for name, service in model["services"].items():
        for value in (service.get("environment") or {}).values():
            assert value not in PASSWORDS.values(), name
    assert {s["source"] for s in model["services"]["app"]["secrets"]} == {"redis_password"}
    assert {s["source"] for s in model["services"]["grafana"]["secrets"]} == {
        "grafana_admin_password"
    }


@pytest.mark.stack  # gunicorn and its workers
def test_the_app_boots_with_the_environment_compose_gives_it(tmp_path):
    """The image's command, with the image's ENV and exactly the environment compose resolves
    for `app` (WEB_CONCURRENCY empty, as compose passes it when unset). Only container paths
    and ports are mapped to this machine: the secret file, and free ports."""
    app = resolved(env=env_file(tmp_path, **PASSWORDS))["services"]["app"]
    env_block = re.search(r"^ENV ((?:.*\\\n)*.*)$", DOCKERFILE, re.M).group(1)
    image_env = dict(re.findall(r"(\w+)=(\S+)", env_block))
    env = {**image_env, **app["environment"]}
    assert env["WEB_CONCURRENCY"] == ""
    secret = tmp_path / "redis_password"
    secret.write_text(PASSWORDS["REDIS_PASSWORD"])
    port, metrics = free_port(), free_port()
    env.update(
        REDIS_PASSWORD_FILE=str(secret),
        APP_BIND=f"127.0.0.1:{port}",
        METRICS_BIND=f"127.0.0.1:{metrics}",
        PATH=os.environ["PATH"],
    )
    command = json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1))
    argv = [sys.executable if a == "python" else a for a in command]
    with (tmp_path / "out").open("w") as out:
        gunicorn = HTTPExecutor(
            argv,
            url=f"http://127.0.0.1:{port}/healthz",
            method="GET",
            envvars=env,
            cwd=str(ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        with gunicorn:
            master = psutil.Process(gunicorn.process.pid)
            # The first worker answers while the master may still be forking the others.
            eventually(lambda: len(master.children()) == default_workers(), 30)
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


START_IN_CONTAINER = ROOT / "nginx" / "start-in-container.sh"


def test_the_nginx_start_script_fills_in_every_template_name():
    names = re.search(r"names='([^']*)'", START_IN_CONTAINER.read_text()).group(1).split()
    assert {n.strip("${}") for n in names} == set(NGINX_TEMPLATE_VARS)


def test_nginx_starts_as_its_container_starts_it(tmp_path):
    """The nginx service's own command (start-in-container.sh, which fills the shared template
    in and starts nginx), with compose's environment; container paths are mapped to this
    machine's, and `app` is this machine's name: a stand-in app answers through the edge."""
    nginx = resolved(env=env_file(tmp_path, **PASSWORDS))["services"]["nginx"]
    assert nginx["command"][:2] == ["sh", "/etc/messages/start-in-container.sh"]
    mounts = {v["target"]: v["source"] for v in nginx["volumes"]}
    assert Path(mounts["/etc/messages/start-in-container.sh"]) == START_IN_CONTAINER
    assert Path(mounts["/etc/messages/nginx.conf.template"]) == NGINX_TEMPLATE
    assert mounts["/run/nginx/cache"] == "edge-cache"  # the cache on a volume, not the tmpfs
    edge, status, app = free_port(), free_port(), free_port()
    env = {
        **nginx["environment"],
        "PATH": os.environ["PATH"],
        "EDGE_LISTEN": f"127.0.0.1:{edge}",
        "EDGE_STATUS_LISTEN": f"127.0.0.1:{status}",
        "APP_HOST": "localhost",
        "APP_PORT": str(app),
        "TLS_CERT": str(ROOT / "localhost.crt"),
        "TLS_KEY": str(ROOT / "nginx" / "localhost.key"),
        "NGINX_RUN_DIR": str(tmp_path),
        "NGINX_USER": "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody"),
        "EDGE_METRICS_LOG": str(tmp_path / "edge-metrics.log"),
        "EDGE_CACHE_DIR": str(tmp_path / "cache"),
    }
    conf = tmp_path / "nginx.conf"
    (tmp_path / "healthz").write_text("stand-in app")
    stand_in = TCPExecutor(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
         str(tmp_path), str(app)],
        host="127.0.0.1",
        port=app,
        timeout=30,
    )  # fmt: skip
    edge_nginx = TCPExecutor(
        ["sh", str(START_IN_CONTAINER), str(NGINX_TEMPLATE), str(conf)],
        host="127.0.0.1",
        port=edge,
        envvars=env,
        timeout=30,
    )
    with stand_in, edge_nginx:
        answer = edge_session().get(f"https://localhost:{edge}/healthz", timeout=5)
        assert answer.text == "stand-in app"
    rendered = conf.read_text()
    assert "${" not in rendered
    # The same server lines as make run writes (compose's default EDGE_APP_MAX_CONNS).
    assert upstream_servers([f"127.0.0.1:{app}"], 32) in rendered


def test_the_redis_and_cluster_nodes_start_the_same_way(tmp_path):
    model = resolved(FILE_SETS["cluster"], env=env_file(tmp_path, **PASSWORDS))["services"]
    nodes = ["redis", *[f"redis-{n}" for n in range(2, 7)]]
    for name in nodes:
        assert model[name]["command"] == ["sh", "/usr/local/bin/start-redis"], name
        assert model[name]["environment"]["REDIS_CLUSTER"] == "yes", name
        mounts = {v["target"]: v.get("source") for v in model[name]["volumes"]}
        assert mounts["/usr/local/bin/start-redis"] == str(ROOT / "redis" / "start.sh")
    join = model["redis-cluster"]
    assert join["command"][:2] == ["sh", "/usr/local/bin/cluster-join"]
    assert join["command"][2:] == [f"{n}:6379" for n in nodes]


def test_the_load_generator_stops_on_sigterm(tmp_path):
    loadgen = resolved(profiles=("load",), env=env_file(tmp_path, **PASSWORDS))["services"]
    assert loadgen["loadgen"]["init"] is True  # wrk as PID 1 would ignore SIGTERM


def test_every_container_log_is_bounded(tmp_path):
    model = resolved(FILE_SETS["cluster"], ("load",), env_file(tmp_path, **PASSWORDS))
    for name, service in model["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert logging["options"]["max-size"] and logging["options"]["max-file"], name


def test_node_exporter_mounts_work_on_docker_desktop(tmp_path):
    volumes = resolved(env=env_file(tmp_path, **PASSWORDS))["services"]["node-exporter"]["volumes"]
    root = next(v for v in volumes if v["target"] == "/host/root")
    assert root.get("bind", {}).get("propagation") in (None, "rprivate")  # rslave fails there


def test_jaeger_keeps_a_bounded_number_of_traces(tmp_path):
    jaeger = resolved(env=env_file(tmp_path, **PASSWORDS))["services"]["jaeger"]
    assert int(jaeger["environment"]["JAEGER_MAX_TRACES"]) > 0
    config = yaml.safe_load((ROOT / "monitoring" / "jaeger" / "config.yaml").read_text())
    (backend,) = config["extensions"]["jaeger_storage"]["backends"].values()
    assert backend["memory"]["max_traces"] == "${env:JAEGER_MAX_TRACES}"


def test_config_never_prints_the_passwords(tmp_path):
    out = run(["config"], FILE_SETS["cluster"], ("load",), env_file(tmp_path, **PASSWORDS))
    assert out.returncode == 0, out.stderr
    for value in PASSWORDS.values():
        assert value not in out.stdout


@pytest.mark.parametrize("missing", sorted(PASSWORDS))
def test_an_empty_password_stops_compose_with_its_name(tmp_path, missing):
    values = {**PASSWORDS, missing: ""}
    out = run(["config", "--quiet"], env=env_file(tmp_path, **values))
    assert out.returncode != 0
    assert f"set {missing} in .env (see .env.example)" in out.stderr, out.stderr


def test_single_quoted_passwords_reach_compose_unchanged(tmp_path):
    """A `$` or ` #` in a single-quoted value stays as written (.env.example says to quote)."""
    value = "a$HOME b #c"
    env = env_file(tmp_path, REDIS_PASSWORD=f"'{value}'", GRAFANA_ADMIN_PASSWORD="'x'")
    model = resolved(env=env)
    check = model["services"].get("settings-check") or {}
    assert not check, "the settings check is never part of the model"
    out = run(["config", "--environment"], env=env)
    assert f"REDIS_PASSWORD={value}" in out.stdout.splitlines(), out.stdout
    assert "single quotes" in (ROOT / ".env.example").read_text()


def test_every_published_port_is_configurable(tmp_path):
    model = resolved(FILE_SETS["cluster"], ("load",), env_file(tmp_path, **PASSWORDS))
    published = [p for s in model["services"].values() for p in s.get("ports", [])]
    assert published
    text = BASE.read_text()
    for port in published:
        assert re.search(
            r"\$\{\w+_PORT:-" + str(port["published"]) + r"\}:" + str(port["target"]), text
        )


def test_the_app_has_no_cpu_cap_unless_one_is_set(tmp_path):
    """A fixed cap above the host's CPUs is refused by the engine (on a 1-CPU host, "2")."""
    app = resolved(env=env_file(tmp_path, **PASSWORDS))["services"]["app"]
    assert "cpus" not in app["deploy"]["resources"]["limits"]
    app = resolved(env=env_file(tmp_path, **PASSWORDS, APP_CPUS="1.5"))["services"]["app"]
    assert float(app["deploy"]["resources"]["limits"]["cpus"]) == 1.5


def test_app_instances_sets_the_replicas_and_tells_the_app(tmp_path):
    """One setting for how many replicas run and how many the app reports as expected
    (AppInstancesMissing compares the two), as APP_INSTANCES does for make run."""
    app = resolved(env=env_file(tmp_path, **PASSWORDS))["services"]["app"]
    assert app["deploy"]["replicas"] == 1 and app["environment"]["APP_INSTANCES"] == "1"
    app = resolved(env=env_file(tmp_path, **PASSWORDS, APP_INSTANCES="3"))["services"]["app"]
    assert app["deploy"]["replicas"] == 3 and app["environment"]["APP_INSTANCES"] == "3"


def test_prometheus_and_alertmanager_serve_at_the_root_whatever_their_external_url(tmp_path):
    with_paths = {
        "PROMETHEUS_EXTERNAL_URL": "https://ops.example.com/prometheus",
        "ALERTMANAGER_EXTERNAL_URL": "https://ops.example.com/alertmanager",
    }
    services = resolved(env=env_file(tmp_path, **PASSWORDS, **with_paths))["services"]
    assert "--web.route-prefix=/" in services["prometheus"]["command"]
    assert "--web.route-prefix=/" in services["alertmanager"]["command"][0]
    for name in ("prometheus", "alertmanager", "grafana"):
        assert services[name]["healthcheck"]["start_period"], name


def test_runbook_links_do_not_depend_on_the_folder_compose_runs_in(tmp_path):
    """`docker compose -f /path/to/docker-compose.yml` from another folder links the same
    runbooks (the default used to be ${PWD}, the caller's folder)."""
    values = []
    for folder in (ROOT, tmp_path):
        out = run(["config", "--format", "json"], env=env_file(tmp_path, **PASSWORDS), pwd=folder)
        assert out.returncode == 0, out.stderr
        prometheus = json.loads(out.stdout)["services"]["prometheus"]
        values.append(prometheus["environment"]["RUNBOOK_BASE_URL"])
    assert values[0] == values[1] == "docs/runbooks.md"
    assert (ROOT / values[0]).is_file()


def test_the_nginx_exporter_waits_for_nginx(tmp_path):
    services = resolved(env=env_file(tmp_path, **PASSWORDS))["services"]
    assert services["nginx-exporter"]["depends_on"]["nginx"]["condition"] == "service_healthy"


def test_the_cluster_keeps_node_1_apart_from_the_single_redis_data(tmp_path):
    services = resolved(FILE_SETS["cluster"], env=env_file(tmp_path, **PASSWORDS))["services"]
    mounts = {v["target"]: v["source"] for v in services["redis"]["volumes"]}
    assert mounts["/data"] == "redis-1-data"
    join = services["redis-cluster"]
    assert join["restart"] == "unless-stopped" and join["environment"]["CLUSTER_JOIN_WATCH"]
    assert services["app"]["depends_on"]["redis-cluster"]["condition"] == "service_healthy"


def global_options(words: list[str]) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """The -f files and --profile names given before a compose subcommand."""
    files, profiles = [], []
    while words and words[0].startswith("-"):
        option, value, words = words[0], words[1], words[2:]
        if option in ("-f", "--file"):
            files.append(ROOT / value)
        elif option == "--profile":
            profiles.append(value)
    return tuple(files), tuple(profiles)


def test_the_readme_compose_commands_resolve(tmp_path):
    """Every `docker compose ...` command the README and docs/ give runs as written against
    the files (with .env in place), up to where an engine would be needed."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(path.read_text() for path in docs)
    commands = sorted(set(re.findall(r"`(docker compose [^`]+)`", text)))
    assert commands
    env = env_file(tmp_path, **PASSWORDS)
    for command in commands:
        files, profiles = global_options(command.split()[2:])
        out = run(["config", "--quiet"], files or (BASE,), profiles, env)
        assert out.returncode == 0, f"{command}: {out.stderr}"


def test_prometheus_scrapes_every_redis_node_in_each_topology(tmp_path):
    """The redis job's targets (through the exporter's /scrape) are the one Redis, or, with
    the cluster override, all six nodes: the override mounts their list over the single."""
    cluster = ["redis", *[f"redis-{n}" for n in range(2, 7)]]
    for files, nodes in (("base", ["redis"]), ("cluster", cluster)):
        services = resolved(FILE_SETS[files], env=env_file(tmp_path, **PASSWORDS))["services"]
        prometheus = services["prometheus"]
        mounts = {v["target"]: v["source"] for v in prometheus["volumes"]}
        source = mounts.get("/etc/prometheus/targets/redis.yml")
        if source is None:  # the whole folder is mounted: its own targets/redis.yml
            source = str(Path(mounts["/etc/prometheus"]) / "targets" / "redis.yml")
        (group,) = yaml.safe_load(Path(source).read_text())
        assert group["targets"] == [f"redis://{n}:6379" for n in nodes], files
