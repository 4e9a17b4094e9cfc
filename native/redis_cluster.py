"""Joins the native stack's Redis nodes into a cluster (REDIS_TOPOLOGY=cluster): three
masters, each with a replica, created once with redis-cli and kept in each node's
nodes.conf. A job: it exits once the cluster serves every slot (0), or with an error.

    python -m native.redis_cluster --password-file FILE HOST:PORT ...
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import redis
from tenacity import retry, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

waiting = retry(
    stop=stop_after_delay(120),
    wait=wait_fixed(0.2),
    retry=retry_if_exception_type(redis.RedisError) | retry_if_result(lambda ok: not ok),
    reraise=True,
)


@waiting
def answers(node: redis.Redis) -> bool:
    """The node is up and takes commands."""
    return bool(node.ping())


@waiting
def healthy(node: redis.Redis, size: int) -> bool:
    """The cluster, as this node sees it, has every node and serves every slot."""
    info = node.cluster("info")
    return info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == size


def create(addresses: list[str], password: str) -> None:
    """redis-cli's cluster creation: slots split over the masters, a replica for each."""
    subprocess.run(
        ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1",
         "--cluster-yes"],
        env={**os.environ, "REDISCLI_AUTH": password},  # never on a command line
        check=True, stdout=sys.stdout, stderr=sys.stderr,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m native.redis_cluster", description=__doc__)
    p.add_argument("--password-file", type=Path, required=True)
    p.add_argument("nodes", nargs="+", help="host:port of each node")
    args = p.parse_args(argv)
    password = args.password_file.read_text().strip()
    clients = []
    for address in args.nodes:
        host, _, port = address.rpartition(":")
        clients.append(redis.Redis(host=host, port=int(port), password=password))
    for client in clients:
        answers(client)
    if int(clients[0].cluster("info")["cluster_known_nodes"]) < len(clients):
        create(args.nodes, password)  # a first start: the nodes know only themselves
    healthy(clients[0], len(clients))
    print(f"Redis Cluster ready: {len(clients)} nodes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
