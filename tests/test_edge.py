"""The API contract end to end: client -> nginx (TLS, HTTP/2) -> gunicorn -> Redis."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess

import pytest
import requests
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from native.settings import app_socket
from tests.harness import CERT
from tests.helpers import FOO_DIGEST, JSON, edge_access_lines, sha256

pytestmark = pytest.mark.stack


def assert_json_error(r: requests.Response, status: int, text: str = "") -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert text in r.json()["err_msg"]
    assert r.headers["X-Request-ID"]


def curl(stack, *args: str) -> str:
    return subprocess.run(
        ["curl", "-sS", "--cacert", CERT, *args], capture_output=True, text=True, check=True
    ).stdout


def test_post_then_get_round_trip(stack):
    message = "end to end ✓ " + "x" * 100
    digest = sha256(message)
    r = stack.request("POST", "/messages", json={"message": message})
    assert r.status_code == 201
    assert r.json() == {"digest": digest}
    assert stack.request("GET", f"/messages/{digest.upper()}").json() == {"message": message}
    assert stack.redis.get(f"msg:{digest}") == message.encode()


def test_message_at_the_default_limit_round_trips(stack):
    message = "é" * (512 * 1024)  # 1 MiB of UTF-8, sent escaped: 3 MiB of JSON
    digest = sha256(message)
    r = stack.request("POST", "/messages", data=json.dumps({"message": message}), headers=JSON)
    assert r.status_code == 201
    assert stack.request("GET", f"/messages/{digest}").json() == {"message": message}


def test_unknown_digest_404(stack):
    assert_json_error(stack.request("GET", f"/messages/{'b' * 64}"), 404, "Message not found")


def test_malformed_digest_400(stack):
    assert_json_error(stack.request("GET", "/messages/xyz"), 400, "64 hexadecimal")


@pytest.mark.parametrize(
    "body", [b"nope", b'{"message": 1}', b"{}", b'{"message": "\xff"}', b'["x"]']
)
def test_bad_body_400(stack, body):
    assert_json_error(stack.request("POST", "/messages", data=body, headers=JSON), 400)


def test_wrong_content_type_415(stack):
    r = stack.request(
        "POST", "/messages", data='{"message": "x"}', headers={"Content-Type": "text/plain"}
    )
    assert_json_error(r, 415, "application/json")


def test_missing_content_type_415(stack):
    r = stack.request("POST", "/messages", data=b'{"message": "x"}')
    assert_json_error(r, 415)


def test_message_over_the_limit_413_from_the_app(stack):
    body = json.dumps({"message": "x" * (1024 * 1024 + 1)})  # body under the 4 MiB limit
    assert_json_error(stack.request("POST", "/messages", data=body, headers=JSON), 413, "Message")


def test_body_over_the_limit_413_from_nginx(stack):
    body = b'{"message": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    r = stack.request("POST", "/messages", data=body, headers=JSON)
    assert_json_error(r, 413, "Request body is larger than 4194304 bytes")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/messages"),
        ("DELETE", "/messages"),
        ("GET", "/messages"),
        ("POST", f"/messages/{FOO_DIGEST}"),
        ("PATCH", f"/messages/{FOO_DIGEST}"),
    ],
)
def test_wrong_method_405(stack, method, path):
    assert_json_error(stack.request(method, path), 405, "Method Not Allowed")


@pytest.mark.parametrize(
    "path", ["/", "/metrics", "/messagesx", "/static/x", "/messages/../metrics", "/.env"]
)
def test_only_the_api_is_reachable(stack, path):
    r = stack.request("GET", path)
    assert_json_error(r, 404)
    assert "flask_" not in r.text


def test_health_checks_are_reachable(stack):
    assert stack.request("GET", "/healthz").json() == {"status": "ok"}
    assert stack.request("GET", "/readyz").json() == {"status": "ready"}
    assert stack.request("GET", "/edge-healthz").json() == {"status": "ok"}


def test_request_id_is_generated_or_passed_through(stack):
    generated = stack.request("GET", "/healthz")
    assert len(generated.headers["X-Request-ID"]) == 32
    kept = stack.request("GET", "/healthz", headers={"X-Request-ID": "client-id-1"})
    assert kept.headers["X-Request-ID"] == "client-id-1"
    replaced = stack.request("GET", "/healthz", headers={"X-Request-ID": "bad id;"})
    assert len(replaced.headers["X-Request-ID"]) == 32
    for r in (generated, kept, replaced):
        assert len(r.raw.headers.getlist("X-Request-ID")) == 1  # the app's is not repeated


@pytest.mark.parametrize("path", ["/healthz", "/nope", f"/messages/{'c' * 64}"])
def test_security_headers_on_every_response(stack, path):
    h = stack.request("GET", path).headers
    assert h["Strict-Transport-Security"].startswith("max-age=")
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Server"] == "nginx"  # server_tokens off: no version


def test_http2_is_offered(stack):
    url = f"https://localhost:{stack.cfg.edge_port}/healthz"
    version = curl(stack, "-o", "/dev/null", "-w", "%{http_version}", "--http2", url)
    assert version == "2"


@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        (ssl.TLSVersion.TLSv1, False),
        (ssl.TLSVersion.TLSv1_1, False),
        (ssl.TLSVersion.TLSv1_2, True),
        (ssl.TLSVersion.TLSv1_3, True),
    ],
)
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_only_tls_1_2_and_1_3(stack, version, accepted):
    ctx = ssl.create_default_context(cafile=CERT)
    ctx.minimum_version = ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer it, so the server decides
    with socket.create_connection(("127.0.0.1", stack.cfg.edge_port), timeout=5) as raw:
        if accepted:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == version.name.replace("_", ".").replace("TLSv1.", "TLSv1.")
        else:
            with pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_certificate_verifies_strictly(stack, host):
    ctx = ssl.create_default_context(cafile=CERT)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13+ does by default
    raw = socket.create_connection(("127.0.0.1", stack.cfg.edge_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)


def test_plain_http_on_the_tls_port_is_a_json_400(stack):
    r = requests.get(f"http://127.0.0.1:{stack.cfg.edge_port}/healthz", timeout=5)
    assert_json_error(r, 400, "HTTPS only")


def test_oversized_headers_are_a_json_431(stack):
    r = stack.request("GET", "/healthz", headers={"X-Big": "x" * 20000})
    assert_json_error(r, 431, "headers too large")


def test_store_down_is_a_fast_503_and_recovers(stack_factory):
    stack = stack_factory()
    stack.executors["redis"].stop()
    r = stack.request("POST", "/messages", json={"message": "foo"})
    assert_json_error(r, 503, "Store unavailable")
    assert r.headers["Retry-After"] == "1"
    assert_json_error(stack.request("GET", "/readyz"), 503)
    stack.executors["redis"].start()
    r = stack.request("POST", "/messages", json={"message": "foo"})
    assert r.status_code == 201  # no restart of the app needed


def test_app_down_is_a_json_502(stack_factory):
    stack = stack_factory()
    stack.executors["app"].stop()
    assert_json_error(stack.request("GET", "/healthz"), 502, "unavailable")
    assert_json_error(stack.request("POST", "/messages", json={"message": "x"}), 502)


def test_app_hung_is_a_json_504(stack_factory):
    stack = stack_factory()
    stack.executors["app"].stop()
    # Where nginx reaches the app: its Unix socket (see native/configs.py app_upstreams).
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(app_socket(stack.cfg, 1)))
        silent.listen(16)  # accepts, never answers: nginx's proxy_read_timeout applies
        r = stack.request("GET", "/healthz")
    assert_json_error(r, 504, "timed out")


def test_too_many_requests_is_a_json_429(stack_factory):
    stack = stack_factory(RATE_LIMIT_RPS="1", RATE_LIMIT_BURST="2")
    statuses = [stack.request("GET", f"/messages/{'d' * 64}").status_code for _ in range(6)]
    assert statuses[:3] == [404, 404, 404]  # one plus a burst of two
    assert 429 in statuses[3:]
    r = stack.request("GET", f"/messages/{'d' * 64}")
    assert_json_error(r, 429, "Too many requests")
    assert stack.request("GET", "/healthz").status_code == 200  # health is not limited


def test_limits_follow_the_settings(stack_factory):
    stack = stack_factory(MAX_MESSAGE_BYTES="10", MAX_BODY_BYTES="100")
    assert stack.request("POST", "/messages", json={"message": "x" * 10}).status_code == 201
    assert_json_error(stack.request("POST", "/messages", json={"message": "x" * 11}), 413)
    big = json.dumps({"message": "x"}) + " " * 100
    assert_json_error(stack.request("POST", "/messages", data=big, headers=JSON), 413, "100 bytes")


# The edge over both protocols. curl for both, so that only the protocol differs.
PROTOCOLS = {"HTTP/1.1": "--http1.1", "HTTP/2": "--http2"}


def curl_over(stack, protocol: str, method: str, path: str, *headers: str) -> dict:
    """One request through the edge with curl over the given protocol: curl's exit code,
    the HTTP version and status (0: no answer), the answer's headers (lower-case names) and
    body."""
    argv = ["curl", "-sS", "--cacert", CERT, PROTOCOLS[protocol], "-X", method, "-D", "-"]
    argv += ["-w", "\n%{http_version} %{http_code}"]
    argv += [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        [*argv, f"https://localhost:{stack.cfg.edge_port}{path}"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    text, _, last = out.stdout.rpartition(b"\n")
    version, status = last.decode().split()
    head, _, body = text.partition(b"\r\n\r\n")
    fields = [line.split(":", 1) for line in head.decode("latin-1").splitlines()[1:]]
    return {
        "exit": out.returncode,
        "version": version,
        "status": int(status),
        "headers": {name.strip().lower(): value.strip() for name, value in fields},
        "body": body,
    }


def assert_edge_json_error(answer: dict, protocol: str, status: int, text: str) -> None:
    assert answer["version"] == protocol.removeprefix("HTTP/"), answer
    assert answer["status"] == status, answer
    assert answer["headers"]["content-type"] == "application/json", answer
    assert text in json.loads(answer["body"])["err_msg"]
    assert answer["headers"]["x-request-id"]


def request_id(case: str, protocol: str) -> str:
    return f"{case}-{protocol.replace('/', '').replace('.', '')}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("case", "uri", "status"),
    [
        ("at-limit", "/messages/" + "a" * (8000 - len("/messages/")), 400),  # the app: no digest
        ("over-limit", "/messages/" + "a" * (8001 - len("/messages/")), 414),
        ("far-over", "/messages/" + "a" * 10_000, 414),
        ("long-query", f"/messages/{'a' * 64}?q=" + "b" * 9000, 414),
    ],
)
def test_a_uri_over_8000_bytes_is_the_edges_json_414_on_both_protocols(
    stack, protocol, case, uri, status
):
    """Over HTTP/2 there is no request line for nginx's 8 KiB buffer to refuse: a long :path
    used to reach gunicorn, which answered 414 in HTML."""
    rid = request_id(case, protocol)
    answer = curl_over(stack, protocol, "GET", uri, f"X-Request-ID: {rid}")
    assert_edge_json_error(answer, protocol, status, "URI too long" if status == 414 else "")
    # The id the answer carries: nginx's own where it refused the request line before it
    # read the headers (HTTP/1.1 past 8 KiB), else ours.
    (line,) = edge_access_lines(stack, [answer["headers"]["x-request-id"]])
    assert line["status"] == status
    assert line["upstream_status"] == ("" if status == 414 else "400")  # 414: nginx alone
    # Only a digest is looked up in the cache: a long path's key used to overflow the buffer
    # nginx builds it in ("proxy_buffer_size 4096 is not enough for cache key").
    assert "not enough for cache key" not in (stack.log_dir / "nginx.log").read_text()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_header_over_8_kib_is_a_json_431_on_both_protocols(stack, protocol):
    """Over HTTP/1.1 nginx refuses it. Over HTTP/2 nginx limits a header's compressed size,
    which this one is under (a run of "a" compresses to 5/8): it reaches gunicorn, which used
    to answer 431 in HTML, and now answers nginx's JSON."""
    rid = request_id("big-header", protocol)
    answer = curl_over(
        stack, protocol, "GET", "/healthz", f"X-Request-ID: {rid}", "X-Big: " + "a" * 9000
    )
    assert_edge_json_error(answer, protocol, 431, "Request headers too large")
    (line,) = edge_access_lines(stack, [rid])
    assert line["status"] == 431
    assert line["upstream_status"] == ("" if protocol == "HTTP/1.1" else "431")  # who refused


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("case", "headers"),
    [
        # Six headers of 7 KB: over 32 KiB in all.
        ("six-7k", [f"X-Flood-{i}: " + "a" * 7000 for i in range(6)]),
        # One header of 9 KB that no compression brings under 8 KiB.
        ("big-raw", ["X-Big: " + "~" * 9000]),
    ],
)
def test_headers_past_nginxs_limits_are_refused_and_logged_with_a_status(
    stack, protocol, case, headers
):
    """Over HTTP/1.1 nginx answers its JSON 431. Over HTTP/2, nginx 1.22 closes the connection
    (GOAWAY) without an answer: its log used to say status 000 (and the JSON line was not
    JSON); it says 444, nginx's code for "closed without a response"."""
    rid = request_id(case, protocol)
    answer = curl_over(stack, protocol, "GET", "/healthz", f"X-Request-ID: {rid}", *headers)
    if protocol == "HTTP/1.1":
        assert_edge_json_error(answer, protocol, 431, "Request headers too large")
    else:
        assert answer["status"] == 0 and answer["exit"] != 0, answer  # no answer at all
        assert b"<html" not in answer["body"]
    (line,) = edge_access_lines(stack, [rid])
    assert line["status"] == (431 if protocol == "HTTP/1.1" else 444)
    assert line["upstream_status"] == ""  # the app never saw it


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/messages", {"OPTIONS", "POST"}),
        (f"/messages/{FOO_DIGEST}", {"GET", "HEAD", "OPTIONS"}),
        ("/healthz", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_options_is_204_with_allow_and_no_html_on_both_protocols(stack, protocol, path, allowed):
    """It used to be a 200 with an empty text/html body (Flask's own answer)."""
    rid = request_id("options-" + path.split("/")[-1][:8], protocol)
    answer = curl_over(stack, protocol, "OPTIONS", path, f"X-Request-ID: {rid}")
    assert answer["version"] == protocol.removeprefix("HTTP/")
    assert answer["status"] == 204, answer
    assert set(answer["headers"]["allow"].split(", ")) == allowed
    assert "content-type" not in answer["headers"] and answer["body"] == b""
    (line,) = edge_access_lines(stack, [rid])
    assert line["status"] == 204


def test_a_strict_verifier_accepts_the_certificate_the_edge_presents(stack):
    """As webpki (rustls) does: the server's certificate must not be a CA, even when it is
    the one certificate the client trusts. Python's cryptography verifies that way."""
    ctx = ssl.create_default_context(cafile=CERT)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    raw = socket.create_connection(("127.0.0.1", stack.cfg.edge_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        presented = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    with open(CERT, "rb") as trusted:
        store = Store(x509.load_pem_x509_certificates(trusted.read()))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("localhost"))
    assert verifier.verify(presented, []) == [presented]
