"""`docker compose up` of the shipped files on a real Docker Engine (tests/docker_engine.py):
the stack a user starts, from empty volumes, with a .env made from .env.example as the
README says. Only a test-only override is added: the host's network for build steps, and a
webhook receiver for the alerts. Grafana, Jaeger and cAdvisor have no image here and are
left out (named in the output); everything else runs as shipped. The project runs the default
topology first, then the Redis Cluster override (in the same project, as an operator moving
to it would), and ends with `down -v`: the tests run in the order they are written."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from native.ports import free_port
from native.settings import ROOT
from tests.compose_cli import COMPOSE_CLI, env_file
from tests.docker_engine import NOT_ON_THIS_ENGINE, Engine, Project
from tests.edge_load import CLIENTS, Load
from tests.harness import edge_session
from tests.helpers import JSON, eventually, sha256
from tests.test_readme import EXAMPLES

pytestmark = [pytest.mark.stack, pytest.mark.engine, pytest.mark.timeout(1200)]

# As a user writes them in .env: single-quoted, with the characters compose would otherwise
# change (a `$` it fills in, a ` #` that starts a comment).
REDIS_PASSWORD = "r3dis$HOME #not-a-comment"
GRAFANA_PASSWORD = "gr4fana$PATH #x"
PASSWORD_VALUES = (REDIS_PASSWORD, GRAFANA_PASSWORD)

# Receives Alertmanager's webhooks on the compose network and prints each one.
ALERT_SINK = """
import http.server

class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print(body.decode(), flush=True)
        self.send_response(200)
        self.end_headers()

http.server.HTTPServer(("", 8080), Sink).serve_forever()
"""


def user_settings(**more: str) -> dict[str, str]:
    """A user's .env: the passwords set (single-quoted), every published port free."""
    ports = ("EDGE", "PROMETHEUS", "ALERTMANAGER", "GRAFANA", "JAEGER")
    return {
        "REDIS_PASSWORD": f"'{REDIS_PASSWORD}'",
        "GRAFANA_ADMIN_PASSWORD": f"'{GRAFANA_PASSWORD}'",
        **{f"{name}_PORT": str(free_port()) for name in ports},
        **more,
    }


class Client:
    """Requests to a project's published ports, as from the host."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.session = edge_session()
        self.edge = f"https://localhost:{project.settings['EDGE_PORT']}"
        self.prometheus = f"http://127.0.0.1:{project.settings['PROMETHEUS_PORT']}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.edge + path, timeout=10, **kwargs)

    def post(self, message: str) -> str:
        r = self.request("POST", "/messages", json={"message": message})
        assert r.status_code == 201, r.text
        digest: str = r.json()["digest"]
        return digest

    def post_many(self, n: int, tag: str) -> dict[str, str]:
        """n new messages stored through the edge: digest -> message."""
        messages = [f"{tag} {i} {secrets.token_hex(8)}" for i in range(n)]
        return {self.post(m): m for m in messages}


def redis_cli(project: Project, *args: str, service: str = "redis") -> str:
    """redis-cli in a Redis container, logged in with the password from its secret file."""
    (container,) = [c["Id"] for c in project.containers(service)]
    script = 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" exec redis-cli --raw "$@"'
    return project.engine.docker("exec", container, "sh", "-c", script, "redis-cli", *args)


def stored(project: Project, digests: list[str]) -> int:
    """How many of these digests Redis itself holds (not nginx's cache)."""
    return int(redis_cli(project, "EXISTS", *[f"msg:{d}" for d in digests]).strip())


def wait_healthy(project: Project, services: list[str], seconds: float = 120) -> None:
    """Wait until healthy(); if it never is, fail with every container's state and logs."""
    try:
        eventually(lambda: healthy(project, services), seconds)
    except Exception as e:
        states = {
            c["Name"]: c["State"].get("Health", c["State"]["Status"]) for c in project.containers()
        }
        logs = project.compose("logs", "--tail", "20", check=False).stdout
        raise AssertionError(f"not healthy: {json.dumps(states, indent=1)}\n{logs}") from e


def healthy(project: Project, services: list[str]) -> bool:
    """Every container of these services running, and healthy where it has a healthcheck."""
    for c in (c for s in services for c in project.containers(s)):
        state = c["State"]
        if state["Status"] != "running":
            return False
        if "Health" in state and state["Health"]["Status"] != "healthy":
            return False
    return True


@pytest.fixture(scope="module")
def project(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The default topology, up from empty volumes."""
    folder = tmp_path_factory.mktemp("compose")
    settings = user_settings(
        ALERT_RECEIVER="webhook",
        ALERT_WEBHOOK_URL="http://alert-sink:8080/",
        ALERT_GROUP_WAIT="1s",
        # One load generator is one client address: the reload test's load is not a client
        # the rate limit is for.
        RATE_LIMIT_RPS="100000",
        RATE_LIMIT_BURST="100000",
        # A path in the external URLs must not move where Prometheus and Alertmanager serve.
        PROMETHEUS_EXTERNAL_URL="https://ops.example.com/prometheus",
        ALERTMANAGER_EXTERNAL_URL="https://ops.example.com/alertmanager",
    )
    sink = {
        "image": "message-service:local",
        "command": ["python", "-c", ALERT_SINK],
        "healthcheck": {
            "test": [
                "CMD",
                "python",
                "-c",
                "import socket; socket.create_connection(('127.0.0.1', 8080))",
            ],
            "interval": "2s",
        },
        "networks": ["backend"],
        "init": True,  # python as PID 1 would ignore SIGTERM: every `down` would wait 10 s
    }
    p = Project(engine, "msgtest", folder, settings=settings, extra_services={"alert-sink": sink})
    print(
        "left out (no image here):", ", ".join(f"{k}: {v}" for k, v in NOT_ON_THIS_ENGINE.items())
    )
    started = time.monotonic()
    p.up()
    print(f"up --build --wait: {time.monotonic() - started:.0f} s")
    yield p
    as_cluster(p).compose("down", "-v", "--remove-orphans", check=False)


@pytest.fixture(scope="module")
def client(project: Project) -> Client:
    return Client(project)


def test_every_service_that_can_run_here_is_up_and_healthy(project):
    services = project.shipped_services()
    assert {"redis", "app", "nginx", "prometheus", "alertmanager"} <= set(services)
    assert healthy(project, project.services_on_this_engine())
    with_healthchecks = [s for s in services if "Health" in project.container(s)["State"]]
    assert set(with_healthchecks) == set(services), "every shipped service has a healthcheck"


@pytest.mark.parametrize(("command", "expected"), EXAMPLES)
def test_the_readme_curl_lines_through_the_published_edge(project, command, expected):
    edge = f"localhost:{project.settings['EDGE_PORT']}"
    argv = shlex.split(command.replace("localhost:5000", edge))
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == json.loads(expected)


CONTRACT = [
    # (method, path, body, headers, status, in err_msg)
    ("GET", "/messages/" + "b" * 64, None, {}, 404, "Message not found"),
    ("GET", "/messages/xyz", None, {}, 400, "64 hexadecimal"),
    ("POST", "/messages", b"nope", JSON, 400, ""),
    ("POST", "/messages", b'{"message": 1}', JSON, 400, ""),
    ("POST", "/messages", b"{}", JSON, 400, ""),
    ("POST", "/messages", b'{"message": "x"}', {"Content-Type": "text/plain"}, 415, ""),
    ("POST", "/messages", json.dumps({"message": "x" * (1024 * 1024 + 1)}), JSON, 413, ""),
    ("POST", "/messages", b"x" * (4 * 1024 * 1024 + 1), JSON, 413, ""),
    ("DELETE", "/messages", None, {}, 405, ""),
    ("GET", "/nowhere", None, {}, 404, ""),
    ("GET", "/metrics", None, {}, 404, ""),  # never through the public port
]


def test_the_api_contract_through_the_published_edge(client):
    message = "compose ✓ " + secrets.token_hex(4)
    digest = client.post(message)
    assert digest == sha256(message)
    assert client.post(message) == digest  # the same answer again
    for path in (f"/messages/{digest}", f"/messages/{digest.upper()}"):
        r = client.request("GET", path)
        assert r.status_code == 200 and r.json() == {"message": message}
    for method, path, body, headers, status, text in CONTRACT:
        r = client.request(method, path, data=body, headers=headers)
        assert r.status_code == status, (method, path, r.status_code, r.text[:200])
        assert r.headers["Content-Type"].startswith("application/json"), (method, path)
        assert text in r.json()["err_msg"]
        assert r.headers["X-Request-ID"]


def test_every_prometheus_target_is_up(project, client):
    """Every target Prometheus scrapes is up, but those of the services left out here."""
    left_out = tuple(f"{name}:" for name in NOT_ON_THIS_ENGINE)

    def targets() -> list[dict[str, Any]] | None:
        r = requests.get(f"{client.prometheus}/api/v1/targets", timeout=10).json()
        found = [
            t
            for t in r["data"]["activeTargets"]
            if not t["labels"]["instance"].startswith(left_out)
        ]
        return found if found and all(t["health"] == "up" for t in found) else None

    found = eventually(targets, 90)
    jobs = {t["labels"]["job"] for t in found}
    assert {"app", "app-ready", "edge", "nginx", "redis", "blackbox", "node"} <= jobs
    assert all(t["health"] == "up" for t in found)


def test_secrets_reach_containers_only_as_files(project):
    """The passwords, kept exactly as single-quoted in .env, are in the secret files and
    nowhere in what `docker inspect` shows (environment, command lines) or `config` prints."""
    containers = project.containers()
    shown = json.dumps(containers)
    for value in PASSWORD_VALUES:
        assert value not in shown
    assert redis_cli(project, "PING").strip() == "PONG"  # the password Redis was given
    (app,) = project.containers("app")
    secret = project.engine.docker("exec", app["Id"], "cat", "/run/secrets/redis_password")
    assert secret == REDIS_PASSWORD
    printed = project.compose("config").stdout
    for value in PASSWORD_VALUES:
        assert value not in printed


def test_containers_run_as_the_users_and_filesystems_the_files_say(project):
    model = project.config()["services"]
    for service in project.services_on_this_engine():
        declared = model[service]
        for c in project.containers(service):
            assert c["HostConfig"]["ReadonlyRootfs"] == bool(declared.get("read_only")), service
            uid = Path(f"/proc/{c['State']['Pid']}/status").read_text().split("Uid:")[1].split()[0]
            image_user = project.engine.inspect(c["Image"])[0]["Config"]["User"]
            expected = str(declared.get("user") or image_user or "0").split(":")[0]
            assert uid == expected, (service, uid, expected)
    assert model["redis"]["user"].startswith("999") and model["app"].get("user") is None


def test_sigkill_of_every_main_process_is_restarted_and_loses_no_message(project, client):
    """Each service's main process killed from the host: its restart policy brings it back,
    healthy, and every message acknowledged before is still in Redis."""
    written = client.post_many(30, "before the kill")
    services = project.shipped_services()
    before = {s: project.container(s) for s in services}
    for container in before.values():
        os.kill(container["State"]["Pid"], signal.SIGKILL)

    def restarted() -> bool:
        after = {s: project.container(s) for s in services}
        return all(after[s]["RestartCount"] > before[s]["RestartCount"] for s in services)

    eventually(restarted, 60)
    wait_healthy(project, services)
    assert stored(project, list(written)) == len(written)
    for digest, message in written.items():
        assert client.request("GET", f"/messages/{digest}").json() == {"message": message}


def test_redis_down_pages_through_alertmanager_to_the_webhook(project, client):
    project.compose("stop", "redis")
    try:
        r = client.request("POST", "/messages", json={"message": "while Redis is down"})
        assert r.status_code == 503 and r.headers["Content-Type"].startswith("application/json")

        def paged() -> bool:
            logs = project.compose("logs", "--no-log-prefix", "alert-sink").stdout
            pages = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
            return any(
                a["labels"]["alertname"] == "RedisDown" and a["status"] == "firing"
                for page in pages
                for a in page["alerts"]
            )

        eventually(paged, 180)
    finally:
        project.compose("start", "redis")
    wait_healthy(project, ["redis"])


def app_requests_by_replica(project: Project) -> dict[str, float]:
    """Message lookups each app replica has answered (its own /metrics, read inside it; not
    the healthchecks' requests)."""
    read = (
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:9101/metrics', timeout=5).read().decode())"
    )
    counts = {}
    for c in project.containers("app"):
        text = project.engine.docker("exec", c["Id"], "python", "-c", read)
        # By container id: a replaced replica's successor may take its name.
        counts[c["Id"]] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("messages_lookups_total{")  # GET /messages/<digest> only
        )
    return counts


def spread(project: Project, client: Client) -> dict[str, float]:
    """Requests each replica answered of 60 that reach the app (unknown digests: a 404 is
    never cached at the edge)."""
    before = app_requests_by_replica(project)
    for _ in range(60):
        assert client.request("GET", f"/messages/{secrets.token_hex(32)}").status_code == 404
    after = app_requests_by_replica(project)
    return {name: after[name] - before.get(name, 0) for name in after}


def every_replica_serves(project: Project, client: Client, replicas: int) -> dict[str, float]:
    """The spread once nginx has the replicas (it checks Docker's DNS every 2 s, then reloads)."""

    def spread_over_all() -> dict[str, float] | None:
        served = spread(project, client)
        return served if len(served) == replicas and all(served.values()) else None

    return eventually(spread_over_all, seconds=30)  # type: ignore[return-value]


def test_scale_app_to_three_spreads_requests_and_a_replaced_replica_gets_traffic(project, client):
    project.compose("up", "-d", "--wait", "--no-recreate", "--scale", "app=3", "app")
    every_replica_serves(project, client, 3)

    replaced = project.containers("app")[0]
    project.engine.docker("rm", "-f", replaced["Id"])
    project.compose("up", "-d", "--wait", "--no-recreate", "--scale", "app=3", "app")
    served = every_replica_serves(project, client, 3)
    assert replaced["Id"] not in served, served


def established_to_the_app(project: Project) -> int:
    """nginx's open TCP connections to the app's port (8000), from its /proc/net/tcp."""
    nginx = project.container("nginx")["Id"]
    table = project.engine.docker("exec", nginx, "cat", "/proc/net/tcp").splitlines()
    # Columns: slot, local address, remote address (hex ip:port), state (01: established).
    rows = [line.split() for line in table[1:]]
    return sum(1 for row in rows if row[2].endswith(":1F40") and row[3] == "01")


def test_nginx_keeps_its_connections_to_the_app_open_with_gthread_workers(project, client):
    """With GUNICORN_WORKER_CLASS=gthread (sync workers close each connection after one
    request), nginx reuses connections to the app: after 50 requests it still holds some
    open, fewer than the requests. The recreated app's new address reaches nginx too."""
    gthread = env_file(project.folder, **project.settings, GUNICORN_WORKER_CLASS="gthread")
    default = project.env_file
    project.env_file = gthread
    try:
        project.compose("up", "-d", "--wait", "app")

        def open_after_requests() -> int:
            # Until nginx has the recreated app's address, its answers are 502s: try again.
            unknown = [f"/messages/{secrets.token_hex(32)}" for _ in range(50)]
            if {client.request("GET", path).status_code for path in unknown} != {404}:
                return 0
            return established_to_the_app(project)

        assert 1 <= eventually(open_after_requests, seconds=30) < 25  # type: ignore[operator]
    finally:
        # The next test's `up` makes the app as shipped again.
        project.env_file = default


def test_down_then_up_keeps_every_message(project, client):
    written = client.post_many(20, "before down")
    project.compose("down")
    assert project.leftovers()["containers"] == []
    project.up()
    assert stored(project, list(written)) == len(written)
    for digest, message in written.items():
        assert client.request("GET", f"/messages/{digest}").json() == {"message": message}


# Day-2 operations with compose's own commands, as docs/operations.md gives them.

BACKUP_TOOL = ("run", "--rm", "-T", "--no-deps", "app", "python", "-m", "service.backup")
ODD_MESSAGE = "line\r\nbreaks, \u00fcn\u00efcode \u2713, a tab\t and a trailing space "


def backup(project: Project, path: Path) -> str:
    """`... service.backup backup - > FILE`; what it said."""
    with path.open("wb") as out:
        return project.compose(*BACKUP_TOOL, "backup", "-", stdout=out).stderr


def restore(
    project: Project, path: Path, *flags: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`... service.backup restore [--force] - < FILE`."""
    with path.open("rb") as src:
        return project.compose(*BACKUP_TOOL, "restore", *flags, "-", stdin=src, check=check)


def dbsize(project: Project) -> int:
    return int(redis_cli(project, "DBSIZE").strip())


def reads_back(client: Client, written: dict[str, str]) -> bool:
    """Every message read back through the edge, as it was written."""
    return all(
        client.request("GET", f"/messages/{d}").json() == {"message": m} for d, m in written.items()
    )


def test_backup_wipe_and_restore_bring_every_message_back(project, client):
    written = client.post_many(30, "backed up")
    written[client.post(ODD_MESSAGE)] = ODD_MESSAGE
    count = dbsize(project)
    file = project.folder / "messages.backup"
    assert f"backup: {count} messages" in backup(project, file)
    content = file.read_bytes()
    assert content.startswith(b"message-service-backup 1\n")
    assert content.splitlines()[-1].startswith(f"end {count} ".encode())
    refused = restore(project, file, check=False)
    assert refused.returncode == 1 and "the store is not empty" in refused.stderr
    redis_cli(project, "FLUSHALL")
    truncated = project.folder / "truncated.backup"
    truncated.write_bytes(content[: len(content) // 2])
    refused = restore(project, truncated, check=False)
    assert refused.returncode == 1 and "truncated" in refused.stderr, refused.stderr
    assert dbsize(project) == 0  # refused before writing anything
    said = restore(project, file).stderr
    assert f"{count} written, 0 already there; all {count} read back byte-identical" in said
    assert dbsize(project) == count
    assert reads_back(client, written)


def container_processes(project: Project, service: str) -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of each process in the service's container."""
    listing = project.engine.docker("top", project.container(service)["Id"], "-eo", "pid,ppid,args")
    rows = [line.split(None, 2) for line in listing.splitlines()[1:]]
    return [(int(pid), int(ppid), args) for pid, ppid, args in rows]


def workers(project: Project, service: str) -> set[int]:
    """The pids of the processes a HUP replaces: nginx's workers, gunicorn's workers."""
    main = project.container(service)["State"]["Pid"]
    processes = container_processes(project, service)
    if service == "nginx":
        return {pid for pid, _, args in processes if args.startswith("nginx: worker")}
    return {pid for pid, ppid, _ in processes if ppid == main}


def last_reload(project: Project, client: Client, service: str) -> str:
    """When Prometheus or Alertmanager last loaded its configuration, as it says."""
    if service == "prometheus":
        info = requests.get(f"{client.prometheus}/api/v1/status/runtimeinfo", timeout=10)
        return str(info.json()["data"]["lastConfigTime"])
    port = project.settings["ALERTMANAGER_PORT"]
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    (line,) = [
        x
        for x in text.splitlines()
        if x.startswith("alertmanager_config_last_reload_success_timestamp_seconds ")
    ]
    return line.split()[1]


def hup(project: Project, client: Client, load: Load, service: str) -> int:
    """One reload as docs/operations.md gives it, under the load: the same container (not
    restarted), its workers or its configuration new. How many requests it closed unanswered."""
    started = project.container(service)["State"]["StartedAt"]
    before = workers(project, service) if service in ("app", "nginx") else set()
    loaded = last_reload(project, client, service) if not before else ""
    if service == "prometheus":
        check = ("promtool", "check", "config", "/etc/prometheus/prometheus.yml")
        project.compose("exec", "-T", "prometheus", *check)
    dropped, served = len(load.dropped), load.served
    project.compose("kill", "-s", "HUP", service)
    if service == "app":  # gunicorn replaces every worker
        eventually(lambda: (now := workers(project, service)) and not now & before, 60)
    elif service == "nginx":  # new workers; the old ones may finish a request first
        eventually(lambda: workers(project, service) - before, 30)
    else:
        eventually(lambda: last_reload(project, client, service) != loaded, 30)
    eventually(lambda: load.served > served + 20, 30)
    assert project.container(service)["State"]["StartedAt"] == started, service
    return len(load.dropped) - dropped


def test_hup_reloads_each_component_in_place_under_load_without_a_failed_request(project, client):
    with Load(client.edge) as load:
        dropped = {
            s: hup(project, client, load, s) for s in ("prometheus", "nginx", "alertmanager", "app")
        }
    print(f"answered: {load.served}, closed unanswered by each reload: {dropped}: {load.dropped}")
    assert load.failures == [], load.failures
    # Only nginx's reload may close a kept-alive connection unread, once per connection.
    assert dropped["nginx"] == len(load.dropped) <= CLIENTS, load.dropped


# The Redis Cluster override, run by this same project after its default topology (whose
# data it leaves as it was), then again after the engine restarts and every container comes
# back by its restart policy alone.

NODES = ["redis", *(f"redis-{n}" for n in range(2, 7))]
SERVING = [*NODES, "redis-cluster", "app", "nginx"]


def as_cluster(project: Project) -> Project:
    """The same project (one name, one .env) read with the cluster override."""
    return Project(
        project.engine,
        project.name,
        project.folder / "cluster",
        (*project.files, ROOT / "docker-compose.cluster.yml"),
        project.settings,
        project.extra_services,
    )


@pytest.fixture(scope="module")
def cluster(project: Project) -> Project:
    return as_cluster(project)


def serves_writes_everywhere(client: Client) -> bool:
    """50 new messages (keys all over the cluster's slots) stored and read back. A 503 (the
    contract's "try again later") is not yet: while the nodes settle after coming back, a
    master may fail over after the join job first saw every node ok. Any other answer fails."""
    written = {}
    for i in range(50):
        message = f"cluster {i} {secrets.token_hex(8)}"
        r = client.request("POST", "/messages", json={"message": message})
        if r.status_code == 503:
            return False
        assert r.status_code == 201, r.text
        written[r.json()["digest"]] = message
    return all(
        client.request("GET", f"/messages/{d}").json() == {"message": m} for d, m in written.items()
    )


def node_addresses(project: Project) -> dict[str, str]:
    return {
        s: next(iter(project.container(s)["NetworkSettings"]["Networks"].values()))["IPAddress"]
        for s in NODES
    }


def move(source: Project, target: Project, file: Path, *services: str) -> str:
    """docs/operations.md's move between topologies, command by command: the edge and app
    stopped (no writes), a backup, the source down (its volumes stay), the target up, the
    backup added to what it holds. What the restore said."""
    source.compose("stop", "nginx", "app")
    backup(source, file)
    source.compose("down")
    target.up(*services)
    return restore(target, file, "--force").stderr


def test_moving_to_the_cluster_carries_every_message_over(project, client, cluster):
    written = client.post_many(20, "before the move to the cluster")
    count = dbsize(project)
    said = move(project, cluster, project.folder / "to-cluster.backup", *SERVING)
    assert f"restore: {count} messages" in said and f"all {count} read back" in said, said
    assert reads_back(Client(cluster), written)


def test_the_cluster_comes_up_after_the_default_topology_of_the_same_project(cluster):
    cluster.up(*SERVING)
    assert healthy(cluster, SERVING)
    assert "cluster_state:ok" in redis_cli(cluster, "CLUSTER", "INFO")
    assert serves_writes_everywhere(Client(cluster))
    # The single Redis's data is left as it was, for going back to that topology.
    volumes = cluster.leftovers()["volumes"]
    assert f"{cluster.name}_redis-data" in volumes and f"{cluster.name}_redis-1-data" in volumes


def test_the_cluster_joins_again_after_the_engine_restarts(cluster):
    client = Client(cluster)
    kept = client.post_many(20, "before the engine restart")
    before = node_addresses(cluster)
    # Another container takes an address first, so the nodes come back on new ones (as
    # they may after a host reboot).
    network = f"{cluster.name}_backend"
    cluster.engine.docker("run", "-d", "--name", "squatter", "--network", network,
                          "--restart", "unless-stopped", "--no-healthcheck",
                          # not the compose labels the image carries: no service's container
                          "--label", "com.docker.compose.project=squatter",
                          "--label", "com.docker.compose.service=squatter",
                          "--entrypoint", "sleep", "message-service:local", "infinity")  # fmt: skip
    cluster.engine.restart()
    try:
        wait_healthy(cluster, SERVING, 240)
        after = node_addresses(cluster)
        assert after != before, "the nodes came back on the same addresses"
        eventually(lambda: serves_writes_everywhere(client), 60)
        for digest, message in kept.items():
            assert client.request("GET", f"/messages/{digest}").json() == {"message": message}
    finally:
        cluster.engine.docker("rm", "-f", "squatter")


def test_moving_back_to_the_single_redis_carries_the_clusters_messages(project, cluster):
    written = Client(cluster).post_many(20, "in the cluster, before the move back")
    said = move(cluster, project, project.folder / "to-single.backup")
    # The cluster's own messages are new there; those it had from the single Redis are not.
    counts = re.search(r"([0-9]+) written, ([0-9]+) already there", said)
    assert counts and int(counts[1]) >= len(written) and int(counts[2]) > 0, said
    assert reads_back(Client(project), written)


def test_down_v_leaves_nothing_behind(project, cluster):
    """`down -v` of each topology removes its own volumes: the cluster's leaves the single
    Redis's data (which it never used), the default topology's then removes that too."""
    cluster.compose("down", "-v", "--remove-orphans")
    left = {"containers": [], "networks": [], "volumes": [f"{project.name}_redis-data"]}
    assert cluster.leftovers() == left
    project.compose("down", "-v", "--remove-orphans")
    assert project.leftovers() == {"containers": [], "networks": [], "volumes": []}


# Bad input: a clear message, before anything starts.


def test_a_taken_edge_port_is_named(engine, tmp_path):
    with socket.create_server(("0.0.0.0", 0)) as taken:  # where compose publishes it
        port = taken.getsockname()[1]
        p = Project(engine, "msgtest-port", tmp_path, settings=user_settings(EDGE_PORT=str(port)))
        try:
            out = p.compose("up", "-d", "--no-deps", "nginx", check=False)
        finally:
            p.compose("down", "-v", check=False)
    assert out.returncode != 0
    assert f"{port}" in out.stderr and "already" in out.stderr, out.stderr


def test_an_engine_that_cannot_be_reached_is_named(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("REDIS_PASSWORD='x'\nGRAFANA_ADMIN_PASSWORD='y'\n")
    argv = [str(COMPOSE_CLI), "--project-directory", str(ROOT), "--env-file", str(env_file), "ps"]
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Cannot connect to the Docker daemon" in out.stderr, out.stderr
