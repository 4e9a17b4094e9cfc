"""The edge's message cache end to end: client -> nginx (TLS, proxy_cache) -> gunicorn -> Redis.
A found message is immutable and served again from nginx's cache without the app; nothing
else is ever stored (not a 404, not an error), and the logs and edge metrics say which
requests the cache answered."""

from __future__ import annotations

import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import ThreadingUnixStreamServer

import pytest
import requests

from native.configs import edge_metrics_log
from native.edge_cache import SHARED_MEMORY, edge_cache_dir, own_edge_cache_dir
from native.processes import prepare_stack
from native.settings import StackConfig
from tests.harness import Stack, edge_session, make_stack
from tests.helpers import edge_access_lines, eventually, mtail_one_shot, sha256
from tests.metrics_text import value

pytestmark = pytest.mark.stack

IMMUTABLE = "public, max-age=31536000, immutable"
ROUTE = "/messages/<digest>"
# Headers that differ on every response by design; all the others must be the same.
PER_RESPONSE = {"date", "x-request-id"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    """A stack whose app traces every request, so that it sends traceresponse headers, and
    waits for a paused Redis (see the concurrent reads)."""
    s = make_stack(
        tmp_path_factory.mktemp("edge-cache"),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_TRACES_SAMPLER="parentbased_always_on",
        REDIS_TIMEOUT="5",
    )
    s.start()
    yield s
    s.stop()


def new_message(stack: Stack) -> str:
    """Store a message no other test has, and answer its digest."""
    message = f"cache me {uuid.uuid4()}"
    r = stack.request("POST", "/messages", json={"message": message})
    assert r.status_code == 201
    return sha256(message)


def ids(prefix: str, n: int) -> list[str]:
    """n request ids of our own, to find each request's line in the edge's logs."""
    run = uuid.uuid4().hex[:12]
    return [f"{prefix}-{run}-{i}" for i in range(n)]


def get(stack: Stack, path: str, request_id: str, method: str = "GET", **headers: str):
    return stack.request(method, path, headers={"X-Request-ID": request_id, **headers})


def read_at_once(
    stack: Stack, digest: str, request_ids: list[str], action: Callable[[], object] | None = None
) -> list[requests.Response]:
    """GET the digest from one thread per request id, all at once: each connects first (the
    TLS handshake), then action() runs and they all read."""
    start = threading.Barrier(len(request_ids), action=action)

    def read(request_id: str) -> requests.Response:
        with edge_session() as http:
            http.get(f"{stack.url}/healthz", timeout=10)  # the TLS handshake, before the race
            start.wait(timeout=30)
            headers = {"X-Request-ID": request_id}
            return http.get(f"{stack.url}/messages/{digest}", timeout=30, headers=headers)

    with ThreadPoolExecutor(len(request_ids)) as pool:
        return list(pool.map(read, request_ids))


def app_reads(stack: Stack) -> float:
    """GETs of /messages/<digest> the app answered (nginx asks the app with GET for a HEAD)."""
    text = stack.scrape("app_metrics")
    return value(text, "flask_http_request_duration_seconds_count", method="GET", path=ROUTE)


def assert_same_but_per_response(responses: list[requests.Response]) -> None:
    first = responses[0]
    names = {n.lower() for n in first.headers} - PER_RESPONSE
    for r in responses:
        assert r.content == first.content
        assert {n.lower() for n in r.headers} - PER_RESPONSE == names
        for name in names:
            assert r.headers[name] == first.headers[name], name
    assert len({r.headers["X-Request-ID"] for r in responses}) == len(responses)


def assert_cacheable(r: requests.Response, digest: str) -> None:
    assert r.headers["Cache-Control"] == IMMUTABLE
    assert r.headers["ETag"] == f'"{digest}"'
    assert "traceresponse" not in r.headers  # the app's trace ids stay in our logs


def test_repeated_reads_are_served_by_the_cache_without_the_app(stack):
    """A digest is kept from its second read on (proxy_cache_min_uses 2: one read once costs
    no cache entry); every read after that is the cache's."""
    digest = new_message(stack)
    before = app_reads(stack)
    request_ids = ids("repeat", 4)
    responses = [get(stack, f"/messages/{digest}", i) for i in request_ids]
    assert [r.status_code for r in responses] == [200] * 4
    assert app_reads(stack) == before + 2  # the first two reads only
    assert_same_but_per_response(responses)
    for r, request_id in zip(responses, request_ids, strict=True):
        assert_cacheable(r, digest)
        assert r.headers["X-Request-ID"] == request_id
        assert len(r.raw.headers.getlist("Cache-Control")) == 1
    lines = edge_access_lines(stack, request_ids)
    assert [line["cache"] for line in lines] == ["MISS", "MISS", "HIT", "HIT"]
    assert [line["upstream_status"] for line in lines[:2]] == ["200", "200"]
    assert {line["upstream_addr"] for line in lines[2:]} == {""}  # no upstream asked


def test_the_query_string_does_not_split_an_entry(stack):
    digest = new_message(stack)
    request_ids = ids("query", 4)
    paths = [f"/messages/{digest}", f"/messages/{digest}?x=1", f"/messages/{digest}?y=2"]
    paths.append(f"/messages/{digest}?x=1")
    responses = [get(stack, p, i) for p, i in zip(paths, request_ids, strict=True)]
    assert_same_but_per_response(responses)
    lines = edge_access_lines(stack, request_ids)
    assert [line["cache"] for line in lines] == ["MISS", "MISS", "HIT", "HIT"]


def test_a_404_is_never_cached_and_a_message_stored_later_is_found_at_once(stack):
    message = f"not yet {uuid.uuid4()}"
    digest = sha256(message)
    request_ids = ids("later", 3)
    for request_id in request_ids[:2]:
        r = get(stack, f"/messages/{digest}", request_id)
        assert r.status_code == 404
        assert r.headers["Cache-Control"] == "no-store"
        assert "ETag" not in r.headers
    assert stack.request("POST", "/messages", json={"message": message}).status_code == 201
    found = get(stack, f"/messages/{digest}", request_ids[2])
    assert found.status_code == 200
    assert found.json() == {"message": message}
    lines = edge_access_lines(stack, request_ids)
    assert [line["upstream_status"] for line in lines] == ["404", "404", "200"]  # all the app's


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_is_304_on_a_miss_and_on_a_hit(stack, method):
    digest = new_message(stack)
    request_ids = ids("etag", 5)
    conditions = [f'"{digest}"', f'W/"{digest}"', "*", f'"{"0" * 64}", "{digest}"', '"other"']
    responses = [
        get(stack, f"/messages/{digest}", i, method, **{"If-None-Match": condition})
        for i, condition in zip(request_ids, conditions, strict=True)
    ]
    assert [r.status_code for r in responses] == [304, 304, 304, 304, 200]
    for r in responses:
        assert_cacheable(r, digest)
    for r in responses[:4]:
        assert r.content == b""
        assert "Content-Type" not in r.headers
    lines = edge_access_lines(stack, request_ids)
    assert [line["cache"] for line in lines] == ["MISS", "MISS", "HIT", "HIT", "HIT"]


def test_head_is_served_from_the_cache_too(stack):
    digest = new_message(stack)
    before = app_reads(stack)
    request_ids = ids("head", 4)
    head, got, head_again, got_again = (
        get(stack, f"/messages/{digest}", i, method)
        for i, method in zip(request_ids, ["HEAD", "GET", "HEAD", "GET"], strict=True)
    )
    assert app_reads(stack) == before + 2  # the first HEAD and GET (a HEAD: as a GET)
    assert head.status_code == head_again.status_code == 200
    assert head.content == head_again.content == b""
    assert got.content == got_again.content and got.json()["message"].startswith("cache me")
    assert head.headers["Content-Length"] == got.headers["Content-Length"]
    for r in (head, got, head_again, got_again):
        assert_cacheable(r, digest)
    lines = edge_access_lines(stack, request_ids)
    assert [line["cache"] for line in lines] == ["MISS", "MISS", "HIT", "HIT"]


def test_concurrent_first_reads_of_a_digest_each_go_to_the_app(stack):
    """No cache lock: readers that come while the first read is on its way (Redis paused for
    0.1 s holds it in the app) do not wait for it (a lock held them 200 ms, then served them
    from the cache); each asks the app, and the entry is there for the next."""
    digest = new_message(stack)
    before = app_reads(stack)
    request_ids = ids("herd", 20)
    # Once every session is connected, Redis is paused and they all read.
    responses = read_at_once(stack, digest, request_ids, lambda: stack.redis.client_pause(100))
    assert {r.status_code for r in responses} == {200}
    assert_same_but_per_response(responses)
    lines = edge_access_lines(stack, request_ids)
    misses = [line for line in lines if line["cache"] == "MISS"]
    assert len(misses) >= 2, lines  # with the lock: one MISS, the others HITs after it
    assert all(line["upstream_status"] == "200" for line in misses)
    assert app_reads(stack) == before + len(misses)
    (after,) = ids("after-the-herd", 1)
    assert get(stack, f"/messages/{digest}", after).status_code == 200
    assert [line["cache"] for line in edge_access_lines(stack, [after])] == ["HIT"]


def test_concurrent_reads_of_an_unknown_digest_wait_for_no_one(stack):
    """A 404 is never stored: every reader asks the app, none waits behind another before
    nginx asks (with a lock each waited its 200 ms timeout first, every time)."""
    digest = sha256("never stored, polled by many")
    request_ids = ids("polled", 16)
    responses = read_at_once(stack, digest, request_ids, lambda: stack.redis.client_pause(100))
    assert {r.status_code for r in responses} == {404}
    lines = edge_access_lines(stack, request_ids)
    assert all(line["upstream_status"] == "404" for line in lines)  # each asked the app
    before_asking = [line["request_time"] - float(line["upstream_response_time"]) for line in lines]
    assert max(before_asking) < 0.1, lines


def test_posts_errors_and_other_routes_say_no_store_and_are_never_cached(stack):
    digest = new_message(stack)
    requests_ = [
        ("POST", "/messages", {"json": {"message": "no-store"}}),
        ("POST", f"/messages/{digest}", {}),  # 405
        ("OPTIONS", f"/messages/{digest}", {}),
        ("GET", "/messages/not-a-digest", {}),  # 400
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/nowhere", {}),
        ("GET", "/edge-healthz", {}),
    ]
    for method, path, kwargs in requests_:
        for _ in range(2):
            r = stack.request(method, path, **kwargs)
            assert r.headers["Cache-Control"] == "no-store", (method, path)
            assert "ETag" not in r.headers, (method, path)
    request_ids = ids("bad", 2)
    for request_id in request_ids:
        assert get(stack, "/messages/not-a-digest", request_id).status_code == 400
    lines = edge_access_lines(stack, request_ids)
    assert [line["upstream_status"] for line in lines] == ["400"] * 2


def test_traced_reads_log_their_trace_id_and_clients_never_see_traceresponse(stack, receiver):
    digest = new_message(stack)
    request_ids = ids("traced", 3)
    for request_id in request_ids:
        r = get(stack, f"/messages/{digest}", request_id)
        assert r.status_code == 200
        assert "traceresponse" not in r.headers
    miss, _, hit = edge_access_lines(stack, request_ids)
    assert re.fullmatch("[0-9a-f]{32}", miss["trace_id"])

    def traced() -> bool:
        return any(
            s.trace_id == miss["trace_id"]
            and s.attributes.get("messages.request_id") == request_ids[0]
            for s in receiver.spans
        )

    eventually(traced, 20)  # the app's span of that very request
    assert (hit["cache"], hit["trace_id"]) == ("HIT", "")  # the app never saw it


def test_the_edge_metrics_count_requests_by_cache_status(stack):
    digest = new_message(stack)
    request_ids = ids("metrics", 4)
    for request_id in request_ids:
        assert get(stack, f"/messages/{digest}", request_id).status_code == 200
    edge_access_lines(stack, request_ids)
    log = edge_metrics_log(stack.cfg)

    def both_logs_flushed() -> list[str] | None:  # a line per request in each
        lines = log.read_text().splitlines()
        return lines if len(lines) == len(stack.edge_lines()) else None

    lines = eventually(both_logs_flushed, 10)
    assert [line.split(" ", 3)[:3] + line.split()[-1:] for line in lines[-4:]] == [
        [ROUTE, "GET", "200", "MISS"],
        [ROUTE, "GET", "200", "MISS"],
        [ROUTE, "GET", "200", "HIT"],
        [ROUTE, "GET", "200", "HIT"],
    ]
    assert any(line.startswith("/messages POST 201 ") and line.endswith(" -") for line in lines)
    out = mtail_one_shot(log)
    assert value(out, "edge_cache_requests_total", route=ROUTE, cache="HIT") >= 2
    assert value(out, "edge_cache_requests_total", route=ROUTE, cache="MISS") >= 2
    assert value(out, "edge_cache_requests_total", route="/messages", cache="none") >= 1
    # Every request, hits included, in the metrics the SLOs count.
    assert value(out, "edge_cache_requests_total") == value(out, "edge_http_requests_total")


def test_a_store_error_is_not_cached(stack_factory):
    stack = stack_factory()
    digest = new_message(stack)
    stack.executors["redis"].stop()
    request_ids = ids("down", 2)
    for request_id in request_ids:
        r = get(stack, f"/messages/{digest}", request_id)
        assert r.status_code == 503
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Retry-After"] == "1"
    stack.executors["redis"].start()
    r = stack.request("GET", f"/messages/{digest}")
    assert r.status_code == 200
    assert_cacheable(r, digest)
    lines = edge_access_lines(stack, request_ids)
    assert [line["upstream_status"] for line in lines] == ["503", "503"]  # both the app's


# What a stand-in for the app answers per digest: (status, headers). The app never sends
# these; they show that only nginx's rules decide what is stored.
TRACED = f"00-{'1' * 32}-{'2' * 16}-01"  # a traceresponse header, as a traced answer has
STAND_IN = {
    "a" * 64: (404, {"Cache-Control": "public, max-age=3600"}),
    "b" * 64: (503, {"Cache-Control": "public, max-age=3600"}),
    "c" * 64: (500, {"Cache-Control": "max-age=3600", "X-Accel-Expires": "3600"}),
    "d" * 64: (200, {"Cache-Control": "no-store"}),
    "e" * 64: (200, {"X-Accel-Expires": "3600", "Expires": "Thu, 01 Jan 2099 00:00:00 GMT"}),
    "f" * 64: (200, {"Cache-Control": IMMUTABLE, "ETag": f'"{"f" * 64}"', "traceresponse": TRACED}),
}


def stand_in_app(address: str, asked: Counter) -> ThreadingHTTPServer:
    """An HTTP server at nginx's upstream address ("unix:<path>" or "host:port") answering
    STAND_IN, counting what it was asked."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream connections

        def do_GET(self) -> None:
            digest = self.path.rsplit("/", 1)[-1]
            asked[digest] += 1
            status, headers = STAND_IN[digest]
            body = b'{"x": 1}\n'
            self.send_response(status)
            for name, value_ in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(name, value_)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "nginx"

        def log_message(self, *args) -> None:  # quiet
            pass

    if address.startswith("unix:"):
        server = ThreadingUnixStreamServer(address.removeprefix("unix:"), Handler)
    else:
        host, port = address.rsplit(":", 1)
        server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_only_a_200_the_app_calls_cacheable_is_stored(stack_factory):
    stack = stack_factory(parts=("nginx",))
    conf = (stack.cfg.state_dir / "nginx" / "nginx.conf").read_text()
    server_line = re.search(r"^\s*server (\S+) max_conns=\d+ max_fails=0;", conf, re.M)
    address = server_line.group(1)  # app 1's
    asked: Counter = Counter()
    server = stand_in_app(address, asked)
    try:
        for digest, (status, _) in STAND_IN.items():
            for _ in range(3):  # kept, if at all, from the second read on
                r = stack.request("GET", f"/messages/{digest}")
                assert r.status_code == status
                assert "traceresponse" not in r.headers
                expected = IMMUTABLE if digest == "f" * 64 else "no-store"
                assert r.headers["Cache-Control"] == expected, digest
    finally:
        server.shutdown()
        server.server_close()
        if address.startswith("unix:"):
            Path(address.removeprefix("unix:")).unlink(missing_ok=True)
    assert asked == {d: 2 if d == "f" * 64 else 3 for d in STAND_IN}


def test_the_cache_lives_in_shared_memory_ours_alone_and_goes_when_the_stack_stops(
    stack_factory, tmp_path
):
    # Building the process list (as tests that start a single process do) makes no folder:
    # only starting the stack does, paired with its removal at stop.
    listed = StackConfig.from_env({"STATE_DIR": str(tmp_path / "listed")})
    prepare_stack(listed)
    assert not edge_cache_dir(listed).exists()
    own = stack_factory()
    folder = edge_cache_dir(own.cfg)
    assert folder.parent == SHARED_MEMORY  # tmpfs: a new entry costs nginx far less
    assert folder.stat().st_mode & 0o777 == 0o700
    digest = new_message(own)
    for _ in range(2):  # kept from its second read on
        own.request("GET", f"/messages/{digest}")
    assert eventually(lambda: any(p.is_file() for p in folder.rglob("*")))
    own.stop()
    assert not folder.exists()  # the memory is given back; the messages stay in Redis
    # A folder someone made in advance under the predictable name is refused.
    other = StackConfig.from_env({"STATE_DIR": str(tmp_path / "other")})
    edge_cache_dir(other).symlink_to(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="not this user's own folder"):
            own_edge_cache_dir(other)
    finally:
        edge_cache_dir(other).unlink()
