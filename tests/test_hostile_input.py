"""Bad input tried systematically, through the TLS edge: a property-based fuzzer driven by the
published OpenAPI document, explicit nasty cases, and slow clients."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from native.settings import ROOT
from tests.harness import CERT
from tests.helpers import JSON

pytestmark = pytest.mark.stack

OPENAPI = ROOT / "service" / "openapi.json"


def test_the_openapi_document_is_published(stack):
    r = stack.request("GET", "/openapi.json")
    assert r.status_code == 200
    assert r.json() == json.loads(OPENAPI.read_text())


def test_schemathesis_finds_nothing(stack):
    """Every operation, positive and negative examples, every check: no 5xx, responses and
    errors as documented (JSON with err_msg), Allow on 405, and so on."""
    schemathesis = Path(sys.executable).parent / "schemathesis"
    argv = [str(schemathesis), "run", f"{stack.url}/openapi.json", "--tls-verify", CERT]
    options = ["--checks", "all", "--max-examples", "60", "--no-color"]
    run = subprocess.run([*argv, *options], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]


def assert_json_error(r, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert set(r.json()) == {"err_msg"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"message": "\xc3\x28"}', 400),  # invalid UTF-8
        (b'{"message": "\xed\xa0\x80"}', 400),  # an encoded surrogate: not UTF-8
        (b"[" * 50_000 + b"]" * 50_000, 400),  # nesting bomb
        (b'{"message": ' + b"1" * 100_000 + b"}", 400),  # a huge number
        (b'{"message": 1e400}', 400),
        (b'{"message": "a", "message": "b"}', 400),  # duplicate keys
        (b'{"message": "nul \\u0000 byte"}', 201),  # an escaped NUL is just a character
        (b'{"message": "raw \x00 byte"}', 400),  # a raw control character is not JSON
        (b"\x00\x00\x00", 400),
        (b'{"message": "x"}\x00', 400),  # trailing garbage
    ],
)
def test_nasty_bodies(stack, body, status):
    r = stack.request("POST", "/messages", data=body, headers=JSON)
    if status == 201:
        assert r.status_code == 201
    else:
        assert_json_error(r, status)


def test_bodies_just_under_and_over_the_limit(stack):
    limit = stack.cfg.app_settings.max_body_bytes
    head, tail = b'{"message": "', b'"}'
    padding = b" " * (limit - len(head) - len(tail) - 1024 * 1024)  # JSON whitespace
    under = head + b"u" * (1024 * 1024) + tail + padding
    assert len(under) == limit
    assert stack.request("POST", "/messages", data=under, headers=JSON).status_code == 201
    assert_json_error(stack.request("POST", "/messages", data=under + b" ", headers=JSON), 413)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": ""},
        {"Content-Type": "application/json; charset=utf-16"},
        {"Content-Type": "text/json"},
        {"Content-Type": "multipart/form-data; boundary=x"},
    ],
)
def test_wrong_and_missing_content_types(stack, headers):
    r = stack.request("POST", "/messages", data=b'{"message": "x"}', headers=headers)
    assert_json_error(r, 415)


def test_a_header_flood_is_refused_as_json(stack):
    flood = {f"X-Flood-{i}": "y" * 100 for i in range(400)}  # 40 KiB of headers
    r = stack.request("GET", "/healthz", headers=flood)
    assert_json_error(r, 431)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/messages/{'a' * 64}/", 404),  # no such route
        (f"/messages/{'a' * 64}%00", 400),  # nginx refuses an encoded NUL
        (f"/messages/{'a' * 63}%2F", 404),  # a "/" in the digest: no such route
        ("/messages/%2e%2e%2fhealthz", 404),
        (f"/messages/..%2F{'a' * 64}", 404),
        (f"/messages/{'a' * 64}%20", 400),  # not 64 hex digits
        ("/messages/" + "a" * 5_000, 400),  # long, under nginx's limit: not a digest
        ("/messages/" + "a" * 10_000, 414),  # over it: nginx says so
        (f"/messages/{'a' * 64}?x=1", 404),  # a query string changes nothing
        ("/messages//" + "a" * 64, 404),  # no redirect to a merged path
    ],
)
def test_path_tricks_on_the_digest(stack, path, status):
    assert_json_error(stack.request("GET", path), status)


def tls_socket(stack) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=CERT)
    raw = socket.create_connection(("127.0.0.1", stack.cfg.edge_port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def test_slow_clients_do_not_tie_up_the_app(stack_factory):
    """A slowloris: many clients trickling headers or bodies. nginx holds them (and drops them
    after its timeouts); the app, one worker with one thread here, never sees them."""
    stack = stack_factory(WEB_CONCURRENCY="1", GUNICORN_THREADS="1")
    slow = []
    for i in range(100):
        s = tls_socket(stack)
        if i % 2:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # headers never end
        else:
            s.sendall(
                b"POST /messages HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )  # a body that never ends
        slow.append(s)
    started = time.monotonic()
    for i in range(20):
        r = stack.request("POST", "/messages", json={"message": f"while slow clients wait {i}"})
        assert r.status_code == 201
    assert time.monotonic() - started < 10  # far less in practice; a stuck worker would hang
    for s in slow:
        s.close()
