"""The Redis Cluster override on a real Docker Engine: it comes up from fresh volumes after
the default topology ran in the same project (whose data it leaves as it was), and again
after the engine restarts and every container comes back by its restart policy alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from native.settings import ROOT
from tests.docker_engine import Engine, Project
from tests.helpers import eventually
from tests.test_compose_engine import Client, healthy, redis_cli, user_settings, wait_healthy

pytestmark = [pytest.mark.stack, pytest.mark.engine, pytest.mark.timeout(1200)]

BASE = (ROOT / "docker-compose.yml",)
CLUSTER = (*BASE, ROOT / "docker-compose.cluster.yml")
NODES = ["redis", *(f"redis-{n}" for n in range(2, 7))]
SERVING = [*NODES, "redis-cluster", "app", "nginx"]


@pytest.fixture(scope="module")
def projects(engine: Engine, tmp_path_factory) -> Iterator[tuple[Project, Project]]:
    """One compose project (one name, one .env) read as the default topology and as the
    cluster."""
    folder = tmp_path_factory.mktemp("cluster")
    settings = user_settings()
    default = Project(engine, "msgtest-cluster", folder / "default", BASE, settings)
    cluster = Project(engine, "msgtest-cluster", folder / "cluster", CLUSTER, settings)
    yield default, cluster
    cluster.compose("down", "-v", "--remove-orphans", check=False)


def serves_writes_everywhere(client: Client) -> bool:
    """50 new messages (keys all over the cluster's slots) stored and read back."""
    written = client.post_many(50, "cluster")
    return all(
        client.request("GET", f"/messages/{d}").json() == {"message": m} for d, m in written.items()
    )


def node_addresses(project: Project) -> dict[str, str]:
    return {
        s: next(iter(project.container(s)["NetworkSettings"]["Networks"].values()))["IPAddress"]
        for s in NODES
    }


def test_the_cluster_comes_up_after_the_default_topology_of_the_same_project(projects):
    default, cluster = projects
    default.up("redis", "app", "nginx")
    Client(default).post_many(5, "single")
    cluster.up(*SERVING)
    assert healthy(cluster, SERVING)
    assert "cluster_state:ok" in redis_cli(cluster, "CLUSTER", "INFO")
    assert serves_writes_everywhere(Client(cluster))
    # The single Redis's data is left as it was, for going back to that topology.
    volumes = cluster.leftovers()["volumes"]
    assert "msgtest-cluster_redis-data" in volumes and "msgtest-cluster_redis-1-data" in volumes


def test_the_cluster_joins_again_after_the_engine_restarts(projects):
    _, cluster = projects
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
