"""nginx finds app replicas through DNS as they come and go, as compose runs it (`docker
compose up --scale app=3`): the shared template rendered with compose's resolver settings,
pointed at a real DNS server the test runs (Docker's embedded DNS answers a service name with
every running replica's address); three real app instances, each on an address of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer
from mirakuru import HTTPExecutor

from native.configs import NGINX_TEMPLATE, nginx_values, render_template
from native.harness import free_port, make_stack
from native.processes import processes
from tests.metrics_text import value

pytestmark = pytest.mark.stack


class ServiceNames(BaseResolver):
    """Answers "app" with the addresses of the replicas running now, as Docker's DNS does."""

    def __init__(self) -> None:
        self.addresses: list[str] = []

    def resolve(self, request, handler):
        reply = request.reply()
        if str(request.q.qname).rstrip(".") == "app" and request.q.qtype == QTYPE.A:
            for address in self.addresses:
                reply.add_answer(RR("app", QTYPE.A, rdata=A(address), ttl=1))
        return reply


@contextmanager
def dns_server() -> Iterator[tuple[ServiceNames, int]]:
    names, port = ServiceNames(), free_port()
    server = DNSServer(names, address="127.0.0.1", port=port)
    server.start_thread()
    try:
        yield names, port
    finally:
        server.stop()


def test_requests_spread_over_every_replica_and_follow_them_as_they_come_and_go(tmp_path):
    stack = make_stack(tmp_path, ("redis", "nginx"))
    app_port = free_port()
    app = next(p for p in processes(stack.cfg) if p.name == "app")  # as make run starts it
    with dns_server() as (names, dns_port):
        # The edge as compose configures it, but asking this test's DNS server.
        values = {
            **nginx_values(stack.cfg),
            "APP_RESOLVER": f"resolver 127.0.0.1:{dns_port} valid=1s ipv6=off;",
            "APP_BACKEND": f"app:{app_port}",
        }
        render_template(NGINX_TEMPLATE, values, stack.cfg.state_dir / "nginx" / "nginx.conf")
        replicas: dict[str, HTTPExecutor] = {}

        def start_replica(address: str) -> None:
            env = {
                **app.env,
                "APP_BIND": f"{address}:{app_port}",
                "APP_SOCKET": "",  # as in compose: replicas are reached over TCP
                "METRICS_BIND": f"127.0.0.1:{free_port()}",
                "WEB_CONCURRENCY": "1",
            }
            health = f"http://{address}:{app_port}/healthz"
            log = (tmp_path / f"{address}.log").open("ab")
            replica = HTTPExecutor(
                app.argv, url=health, method="GET", envvars=env, timeout=60, stdout=log
            )
            replica.start()
            replicas[address] = replica

        def stored_by(address: str) -> float:
            metrics = replicas[address].envvars["METRICS_BIND"]  # mirakuru keeps the env
            text = requests.get(f"http://{metrics}/metrics", timeout=5).text
            return value(text, "messages_stored_total")

        def post_many(n: int, tag: str) -> None:
            for i in range(n):
                r = stack.request("POST", "/messages", json={"message": f"{tag} {i}"})
                assert r.status_code == 201, r.text

        stack.start()
        try:
            for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                start_replica(address)
            names.addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            post_many(60, "three")
            spread = {a: stored_by(a) for a in names.addresses}
            assert sum(spread.values()) == 60 and min(spread.values()) >= 5, spread
            # One replica goes, another comes (a recreated container gets a new address).
            start_replica("127.0.0.5")
            names.addresses = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
            replicas["127.0.0.2"].stop()
            time.sleep(1.5)  # the resolver's answer is valid for 1 s (compose: 5 s)
            post_many(60, "moved")
            assert stored_by("127.0.0.5") >= 5, "the new replica gets traffic"
        finally:
            for replica in replicas.values():
                replica.stop()
            stack.stop()
