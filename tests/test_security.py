"""Locked down: Redis needs a password that never shows, TLS refuses weak ciphers, and the
containers run with least privilege."""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import psutil
import pytest
import redis
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from native.settings import ROOT
from tests.harness import CERT

COMPOSE_FILE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE = COMPOSE_FILE["services"]


def made_by_make_cert(folder: Path) -> tuple[Path, Path]:
    """What `make cert` (scripts/make-dev-cert) makes, made in a copy of its folders."""
    (folder / "scripts").mkdir()
    (folder / "nginx").mkdir()
    shutil.copy(ROOT / "scripts" / "make-dev-cert", folder / "scripts")
    subprocess.run([folder / "scripts" / "make-dev-cert"], capture_output=True, check=True)
    return folder / "localhost.crt", folder / "nginx" / "localhost.key"


@pytest.mark.parametrize("made", ["committed", "by make cert"])
def test_the_development_certificate_is_a_server_certificate_not_a_ca(made, tmp_path):
    """Strict verifiers (rustls/webpki, Python's cryptography) refuse a CA certificate as a
    server's, even one they are told to trust: it must be a plain server certificate."""
    if made == "committed":
        cert_file, key_file = Path(CERT), ROOT / "nginx" / "localhost.key"
    else:
        cert_file, key_file = made_by_make_cert(tmp_path)
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    # A verifier as strict as webpki, trusting this certificate alone, takes it for both names.
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        verifier = PolicyBuilder().store(Store([cert])).build_server_verifier(name)
        assert verifier.verify(cert, []) == [cert]
    # And its key is the one nginx serves with.
    pem = key_file.read_bytes()
    key = serialization.load_pem_private_key(pem[pem.index(b"-----BEGIN") :], password=None)
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*raw) == cert.public_key().public_bytes(*raw)


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
    [
        ("ECDHE-ECDSA-AES128-SHA", False),  # CBC
        ("ECDHE-ECDSA-AES256-SHA", False),  # CBC
        ("AES128-SHA", False),  # no forward secrecy
        ("AES256-SHA256", False),  # no forward secrecy
        ("ECDHE-ECDSA-AES128-GCM-SHA256", True),  # the same client, a good suite: accepted
    ],
)
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


@pytest.mark.stack
@pytest.mark.parametrize(
    ("group", "accepted"),
    [
        ("X448", False),  # outside Mozilla's intermediate profile
        ("secp521r1", False),  # outside Mozilla's intermediate profile
        ("X25519", True),
        ("prime256v1", True),
        ("secp384r1", True),
    ],
)
def test_only_the_profiles_key_exchange_groups_are_offered(stack, group, accepted):
    # TLS 1.3: there, the groups a client offers are for the key exchange alone (in 1.2 they
    # also restrict the certificate's curve, which would mix two questions).
    client = ["openssl", "s_client", "-connect", f"127.0.0.1:{stack.cfg.edge_port}", "-brief"]
    offer = ["-tls1_3", "-groups", group, "-CAfile", CERT, "-servername", "localhost"]
    out = subprocess.run(
        [*client, *offer], input="", capture_output=True, text=True, timeout=10, check=False
    )
    assert (out.returncode == 0) == accepted, out.stderr


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


def test_no_read_only_container_takes_a_secret_from_the_environment():
    """Compose writes such a secret's file into the container: it refuses a read-only one
    ("'file' is the sole supported option"), and nothing starts."""
    from_env = {n for n, s in COMPOSE_FILE["secrets"].items() if "environment" in s}
    for name, service in COMPOSE.items():
        takes = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        if takes & from_env:
            assert not service.get("read_only"), name
    assert COMPOSE["nginx"]["read_only"] is True


def test_stateful_and_app_containers_are_limited():
    for name in ("app", "redis", "nginx"):
        assert COMPOSE[name]["deploy"]["resources"]["limits"]["memory"], name
    assert COMPOSE["redis"]["user"] != "0"


def test_secrets_come_from_the_environment_not_the_repo():
    """Each password is a compose secret taken from the user's environment (.env), required
    (compose stops without it), and never given a default."""
    secrets = COMPOSE_FILE["secrets"]
    assert secrets == {
        "redis_password": {"environment": "REDIS_PASSWORD"},
        "grafana_admin_password": {"environment": "GRAFANA_ADMIN_PASSWORD"},
    }
    check = COMPOSE_FILE["services"]["settings-check"]
    assert check["profiles"] == ["never-started"]
    for variable in ("REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(r"\$\{" + variable + r":\?[^}]+\}", check["environment"]["PASSWORDS_SET"])
    assert "ports" not in COMPOSE["redis"]
