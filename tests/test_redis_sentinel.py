"""The store through Redis Sentinel, on real redis-server and sentinel processes: the API
works, a killed master is replaced, and the opt-in WAIT makes a 201 mean "on a replica too"."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from mirakuru import TCPExecutor

from native.ports import free_port
from service.app import create_app
from tests.harness import START_TIMEOUT, redis_executor
from tests.helpers import FailoverWrites, eventually, sha256

pytestmark = pytest.mark.stack

MASTER_NAME = "mymaster"


@dataclass
class Topology:
    master: TCPExecutor
    replica: TCPExecutor
    sentinels: list[TCPExecutor]

    @property
    def sentinel_env(self) -> dict[str, str]:
        addresses = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return {
            "REDIS_MODE": "sentinel",
            "REDIS_SENTINELS": addresses,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
        }

    def current_master_port(self) -> int:
        s = redis.Redis(port=self.sentinels[0].port)
        return int(s.sentinel_get_master_addr_by_name(MASTER_NAME)[1])


def sentinel_executor(tmp: Path, port: int, master_port: int) -> TCPExecutor:
    conf = tmp / f"sentinel-{port}.conf"  # sentinel rewrites its own config: one each
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
        f"sentinel failover-timeout {MASTER_NAME} 5000\n"
    )
    log = (tmp / f"sentinel-{port}.log").open("ab")
    argv = ["redis-server", str(conf), "--sentinel"]
    return TCPExecutor(argv, host="127.0.0.1", port=port, stdout=log, timeout=START_TIMEOUT)


@pytest.fixture
def topology(tmp_path) -> Iterator[Topology]:
    master_port, replica_port = free_port(), free_port()
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    master = redis_executor(tmp_path / "m", master_port)
    replica = redis_executor(
        tmp_path / "r", replica_port, "--replicaof", "127.0.0.1", str(master_port)
    )
    sentinels = [sentinel_executor(tmp_path, free_port(), master_port) for _ in range(3)]
    started = []
    try:
        for ex in (master, replica, *sentinels):
            ex.start()
            started.append(ex)
        # Until the replica has synced, a failover would have nothing to promote.
        replica_info = redis.Redis(port=replica_port).info
        eventually(lambda: replica_info("replication")["master_link_status"] == "up", 30)
        yield Topology(master, replica, sentinels)
    finally:
        for ex in reversed(started):
            ex.kill()


def test_the_api_works_through_sentinel(topology):
    client = create_app(topology.sentinel_env).test_client()
    r = client.post("/messages", json={"message": "foo"})
    assert r.status_code == 201
    digest = r.get_json()["digest"]
    assert client.get(f"/messages/{digest}").get_json() == {"message": "foo"}
    assert client.get(f"/messages/{'0' * 64}").status_code == 404
    assert client.get("/messages/nope").status_code == 400
    assert client.get("/readyz").status_code == 200
    # It wrote to the master, which replicates it (asynchronously: CI once read the replica
    # before the write had reached it).
    replica = redis.Redis(port=topology.replica.port)
    eventually(lambda: replica.get(f"msg:{digest}") == b"foo", 5)


def test_a_killed_master_is_replaced_and_the_service_recovers(topology):
    with FailoverWrites(create_app(topology.sentinel_env), "failover") as writes:
        time.sleep(1)
        old_master = topology.master.port
        topology.master.kill(sig=signal.SIGKILL)
        killed_at = time.monotonic()
        eventually(lambda: topology.current_master_port() != old_master, 30)
        failover_s = time.monotonic() - killed_at
        time.sleep(2)  # writes go on against the new master

    results = writes.results
    statuses = writes.statuses()
    acknowledged = writes.acknowledged()
    reader = create_app(topology.sentinel_env).test_client()
    lost = [d for m, d in acknowledged if reader.get(f"/messages/{d}").status_code != 200]
    print(
        f"\nSentinel failover: master SIGKILLed, new master after {failover_s:.1f} s; "
        f"{len(results)} writes {statuses}; acknowledged but lost: {len(lost)}"
    )
    assert set(statuses) <= {201, 503}, statuses  # errors are the clear, retryable kind
    assert statuses.get(503, 0) < len(results)
    assert results[-1][1] == 201  # writing again, to the new master, without a restart
    for message, digest in acknowledged[-10:]:
        assert digest == sha256(message)
    # Replication is asynchronous: a write acknowledged just before the crash may not have
    # reached the replica. Only a handful can be in that window.
    assert len(lost) <= 4 * 2


def test_wait_makes_201_mean_replicated(topology):
    env = {**topology.sentinel_env, "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "200"}
    client = create_app(env).test_client()
    r = client.post("/messages", json={"message": "on two servers"})
    assert r.status_code == 201
    assert redis.Redis(port=topology.replica.port).get(f"msg:{r.get_json()['digest']}")
    topology.replica.stop()  # no replica left to acknowledge
    r = client.post("/messages", json={"message": "on one server only"})
    assert r.status_code == 503
    assert r.get_json() == {"err_msg": "Store unavailable, try again later"}
