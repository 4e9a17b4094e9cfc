"""Locked down: Redis needs a password that never shows, TLS refuses weak ciphers, and the
containers run with least privilege."""

from __future__ import annotations

import socket
import ssl
import stat

import psutil
import pytest
import redis
import yaml

from native.stack import ROOT
from tests.conftest import CERT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


@pytest.mark.stack
def test_redis_refuses_clients_without_the_password(stack):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.cfg.ports["redis"]).ping()
    assert stack.redis.ping()


@pytest.mark.stack
def test_the_redis_password_is_private_and_on_no_command_line(stack):
    secret = stack.cfg.redis_password_file
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = secret.read_text().strip()
    assert len(password) >= 32
    for proc in psutil.process_iter(["cmdline"]):
        assert password not in " ".join(proc.info["cmdline"] or [])


@pytest.mark.stack
@pytest.mark.parametrize(
    ("ciphers", "accepted"),
    [("ECDHE-ECDSA-AES128-SHA", False), ("ECDHE-ECDSA-AES256-SHA", False),  # CBC
     ("AES128-SHA", False), ("AES256-SHA256", False),  # no forward secrecy
     ("ECDHE-ECDSA-AES128-GCM-SHA256", True)],  # the same client, a good suite: accepted
)  # fmt: skip
def test_weak_tls_1_2_ciphers_are_refused(stack, ciphers, accepted):
    ctx = ssl.create_default_context(cafile=CERT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    raw = socket.create_connection(("127.0.0.1", stack.cfg.edge_port), timeout=5)
    if accepted:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.cipher()[0] == ciphers
    else:
        with raw, pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="localhost")


# cAdvisor reads every container's cgroups and the host's devices: it must be privileged,
# the one exception, and it publishes nothing.
@pytest.mark.parametrize("name", sorted(set(COMPOSE) - {"cadvisor"}))
def test_containers_run_with_least_privilege(name):
    service = COMPOSE[name]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["cap_drop"] == ["ALL"]


def test_only_cadvisor_is_privileged():
    assert [n for n, s in COMPOSE.items() if s.get("privileged")] == ["cadvisor"]
    assert "ports" not in COMPOSE["cadvisor"]


def test_stateful_and_app_containers_are_read_only_and_limited():
    for name in ("app", "redis"):
        assert COMPOSE[name]["read_only"] is True, name
    for name in ("app", "redis", "nginx"):
        assert COMPOSE[name]["deploy"]["resources"]["limits"]["memory"], name
    assert COMPOSE["redis"]["user"] != "0"


def test_secrets_come_from_the_environment_not_the_repo():
    for service, variable in (("redis", "REDIS_PASSWORD"), ("app", "REDIS_PASSWORD"),
                              ("grafana", "GF_SECURITY_ADMIN_PASSWORD")):  # fmt: skip
        value = COMPOSE[service]["environment"][variable]
        assert value.startswith("${") and ":?" in value, f"{service}: no default secret"
    assert "ports" not in COMPOSE["redis"]
