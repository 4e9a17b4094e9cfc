"""Traces and logs end to end: a real OTLP/HTTP receiver gets the app's spans for requests
sent through the TLS edge, and they match the app's JSON log lines and the request id. The
spans use the stable semantic-convention names, and their resource names the service's
revision and deployment environment, unless the operator's OTEL_* variables say otherwise."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import Stack, make_stack
from tests.helpers import edge_access_lines
from tests.otlp_receiver import Receiver, Span, start_receiver

pytestmark = pytest.mark.stack

SECRET = "attack at dawn 7f3a9c"  # a message whose text must not leave the service
FORGED_TRACE = "0af7651916cd43dd8448eb211c80319c"
FORGED_PARENT = f"00-{FORGED_TRACE}-b7ad6b7169203331-01"
SERVER, CLIENT = 2, 3  # OTLP span kinds
REQUEST_ID = "messages.request_id"  # the server span's attribute: the X-Request-ID
PROBABILITY = "messages.sampling.probability"  # a sampled span's odds of being sampled
REVISION = "0123abc"  # GIT_REVISION of the module's stack
# The names semantic conventions had before HTTP and database were stable: off by default.
OLD_HTTP = {
    *("http.method", "http.status_code", "http.target", "http.scheme", "http.flavor"),
    *("http.host", "http.server_name", "http.user_agent", "net.host.name", "net.peer.ip"),
}
OLD_DB = {
    *("db.system", "db.statement", "db.redis.database_index"),
    *("net.peer.name", "net.peer.port", "net.transport"),
}


def traced_stack(tmp: Path, receiver: Receiver, **env: str) -> Stack:
    settings = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export quickly, the tests wait for spans
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",  # every request, unless said otherwise
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "1",
        "APP_ACCESS_LOG": "true",  # the app's own line per request, to match spans with
        # The service's defaults, whatever the environment running the tests has.
        "OTEL_SEMCONV_STABILITY_OPT_IN": "",
        "OTEL_RESOURCE_ATTRIBUTES": "",
        "OTEL_SERVICE_NAME": "",
        "DEPLOYMENT_ENVIRONMENT": "",
        **env,
    }
    stack = make_stack(tmp, **settings)
    stack.start()
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    s = traced_stack(tmp_path_factory.mktemp("traced"), receiver, GIT_REVISION=REVISION)
    yield s
    s.stop()


def app_log(stack: Stack) -> list[dict]:
    """Every line the app process wrote, each parsed as JSON (fails on a line that is not)."""
    text = (stack.log_dir / "app.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def spans_of(stack: Stack, receiver: Receiver, request_id: str) -> tuple[Span, list[Span]]:
    """The server span tagged with the request id and the spans of its trace, once exported."""

    def server_span() -> Span | None:
        tagged = (s for s in receiver.spans if s.attributes.get(REQUEST_ID) == request_id)
        return next((s for s in tagged if s.kind == SERVER), None)

    stack.executors["app"].wait_for(lambda: server_span() is not None)
    root = server_span()
    return root, [s for s in receiver.spans if s.trace_id == root.trace_id]


def test_a_request_gives_a_server_span_with_a_redis_child_matching_the_logs(stack, receiver):
    r = stack.request("POST", "/messages", json={"message": "traced"})
    assert r.status_code == 201
    request_id = r.headers["X-Request-ID"]
    root, trace_spans = spans_of(stack, receiver, request_id)

    assert root.attributes["http.route"] == "/messages"
    assert root.attributes["http.response.status_code"] == 201
    assert root.parent_span_id == ""  # nginx passed no trace context: the app starts the trace
    redis_spans = [s for s in trace_spans if s.kind == CLIENT]
    # The PING after the SET asks whether Redis could save it (service/store.py).
    assert [s.name for s in redis_spans] == ["SET", "PING"]
    assert {s.parent_span_id for s in redis_spans} == {root.span_id}
    assert root.resource["service.name"] == "messages"

    access = [line for line in app_log(stack) if line.get("request_id") == request_id]
    assert len(access) == 1
    (line,) = access
    fields = (line["logger"], line["method"], line["route"], line["status"])
    assert fields == ("service.access", "POST", "/messages", 201)
    assert line["trace_id"] == root.trace_id
    assert line["span_id"] == root.span_id
    assert line["duration_ms"] > 0
    # The edge's line names the trace too (the app's traceresponse header), which stops there.
    assert edge_access_lines(stack, [request_id], 60)[0]["trace_id"] == root.trace_id
    assert "traceresponse" not in r.headers


def test_spans_carry_the_stable_attribute_names_and_not_the_old_ones(stack, receiver):
    r = stack.request("POST", "/messages", json={"message": "stable names"})
    root, trace_spans = spans_of(stack, receiver, r.headers["X-Request-ID"])

    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.response.status_code"] == 201
    assert root.attributes["http.route"] == "/messages"
    assert root.attributes["url.path"] == "/messages"
    assert not [name for name in OLD_HTTP if name in root.attributes]
    (redis_span,) = [s for s in trace_spans if s.kind == CLIENT and s.name == "SET"]
    assert redis_span.attributes["db.system.name"] == "redis"
    assert redis_span.attributes["db.query.text"] == "SET ? ? ?"  # arguments never leave
    assert redis_span.attributes["server.address"] == "127.0.0.1"
    assert redis_span.attributes["server.port"] == stack.cfg.ports["redis"]
    assert redis_span.attributes["network.transport"] == "tcp"
    assert not [name for name in OLD_DB if name in redis_span.attributes]


def test_the_resource_names_the_revision_and_the_environment(stack, receiver):
    r = stack.request("GET", f"/messages/{'a' * 64}")
    _, trace_spans = spans_of(stack, receiver, r.headers["X-Request-ID"])
    assert len(trace_spans) == 2  # the server span and the GET
    for span in trace_spans:
        assert span.resource["service.name"] == "messages"
        assert span.resource["service.version"] == REVISION  # as in messages_build_info
        assert span.resource["deployment.environment.name"] == "development"
        assert "deployment.environment" not in span.resource  # the deprecated name


def test_the_operators_otel_settings_win_over_the_defaults(tmp_path, receiver):
    stack = traced_stack(
        tmp_path,
        receiver,
        GIT_REVISION=REVISION,
        DEPLOYMENT_ENVIRONMENT="staging",
        OTEL_RESOURCE_ATTRIBUTES="service.version=7.1.0,deployment.environment.name=production",
        # Old and new HTTP names; database not named: the old database names only.
        OTEL_SEMCONV_STABILITY_OPT_IN="http/dup",
    )
    try:
        r = stack.request("POST", "/messages", json={"message": "operator's names"})
        root, trace_spans = spans_of(stack, receiver, r.headers["X-Request-ID"])
        assert root.resource["service.version"] == "7.1.0"
        assert root.resource["deployment.environment.name"] == "production"
        assert root.resource["service.name"] == "messages"
        attrs = root.attributes
        assert (attrs["http.method"], attrs["http.request.method"]) == ("POST", "POST")
        assert (attrs["http.status_code"], attrs["http.response.status_code"]) == (201, 201)
        (redis_span,) = [s for s in trace_spans if s.kind == CLIENT and s.name == "SET"]
        assert redis_span.attributes["db.system"] == "redis"
        assert redis_span.attributes["db.statement"] == "SET ? ? ?"
        assert "db.system.name" not in redis_span.attributes
        assert "db.query.text" not in redis_span.attributes
    finally:
        stack.stop()


def test_a_forged_traceparent_from_the_internet_is_dropped(stack, receiver):
    r = stack.request("GET", f"/messages/{'f' * 64}", headers={"traceparent": FORGED_PARENT})
    root, _ = spans_of(stack, receiver, r.headers["X-Request-ID"])
    assert root.trace_id != FORGED_TRACE
    assert root.parent_span_id == ""


def test_trace_context_from_the_trusted_network_is_kept(tmp_path, receiver):
    # Ratio 0: only the caller's sampled flag can start a trace.
    stack = traced_stack(
        tmp_path,
        receiver,
        TRACE_CONTEXT_TRUSTED="127.0.0.0/8",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    try:
        unsampled = FORGED_PARENT[:-2] + "00"
        skipped = stack.request("GET", f"/messages/{'e' * 64}", headers={"traceparent": unsampled})
        r = stack.request("GET", f"/messages/{'f' * 64}", headers={"traceparent": FORGED_PARENT})
        root, _ = spans_of(stack, receiver, r.headers["X-Request-ID"])
        assert root.trace_id == FORGED_TRACE
        assert root.parent_span_id == "b7ad6b7169203331"
        skipped_id = skipped.headers["X-Request-ID"]
        assert not [s for s in receiver.spans if s.attributes.get(REQUEST_ID) == skipped_id]
        (line,) = [x for x in app_log(stack) if x.get("request_id") == skipped_id]
        assert "trace_id" not in line
    finally:
        stack.stop()


def test_by_default_a_budget_of_traces_a_second_is_traced_and_logs_say_which(tmp_path):
    own = start_receiver()  # this stack's spans only
    # The service's default sampler (per worker: 1 trace a second, then 1% of the rest), on
    # one worker, so the stack's budget is that worker's.
    stack = traced_stack(
        tmp_path, own, OTEL_TRACES_SAMPLER="", OTEL_TRACES_SAMPLER_ARG="", WEB_CONCURRENCY="1"
    )

    def get(i: int) -> str:
        return stack.request("GET", f"/messages/{i:064x}").headers["X-Request-ID"]

    try:
        first = get(0)  # the worker's bucket is full: traced
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = set(pool.map(get, range(1, 301)))
        seconds = time.monotonic() - started
        time.sleep(1.1)  # a quiet second fills the bucket again: traced
        last = get(301)
        lines = {
            x["request_id"]: x for x in app_log(stack) if x.get("request_id") in ids | {first, last}
        }
        assert len(lines) == 302
        assert "trace_id" in lines[first]
        assert "trace_id" in lines[last]
        burst = {rid for rid in ids if "trace_id" in lines[rid]}
        # The 300: at most one a second from the bucket (the first request took what it
        # held), plus Binomial(300, 0.01) by the ratio: 3 expected, 12 or more a
        # one-in-15,000 event. A fixed 10% would trace about 30.
        assert len(burst) <= math.ceil(seconds) + 11, (len(burst), seconds)
        for request_id in burst | {first, last}:
            root, trace_spans = spans_of(stack, own, request_id)
            assert root.trace_id == lines[request_id]["trace_id"]
            assert [s.name for s in trace_spans if s.kind == CLIENT] == ["GET"]
            # From the budget (certain), or by the ratio on the trace id the span carries,
            # as TraceIdRatioBased(0.01) anywhere downstream decides it.
            assert root.attributes[PROBABILITY] in (1.0, 0.01)
            if root.attributes[PROBABILITY] == 0.01:
                assert int(root.trace_id, 16) & (2**64 - 1) < 0.01 * 2**64
        # Unsampled requests made no span at all: no server span, no Redis span.
        assert len(own.spans) == 2 * (len(burst) + 2)
    finally:
        stack.stop()
        own.close()


def test_message_text_never_leaves_in_spans_or_logs(stack, receiver):
    r = stack.request("POST", "/messages", json={"message": SECRET})
    digest = r.json()["digest"]
    got = stack.request("GET", f"/messages/{digest}")
    assert got.json() == {"message": SECRET}
    spans_of(stack, receiver, got.headers["X-Request-ID"])
    spans_of(stack, receiver, r.headers["X-Request-ID"])
    secret = SECRET.encode()
    assert not any(secret in body for body in receiver.raw)
    for log in ("app.log", "nginx.log", "redis.log"):
        assert SECRET not in (stack.log_dir / log).read_text()


def test_health_checks_are_not_traced(stack, receiver):
    r = stack.request("GET", "/healthz")
    stack.request("POST", "/messages", json={"message": "after health"})  # flushes a batch
    marker = stack.request("GET", f"/messages/{'9' * 64}")
    spans_of(stack, receiver, marker.headers["X-Request-ID"])
    assert not [
        s for s in receiver.spans if s.attributes.get(REQUEST_ID) == r.headers["X-Request-ID"]
    ]
    assert not [
        s for s in receiver.spans if s.attributes.get("http.route") in ("/healthz", "/readyz")
    ]


def test_every_worker_exports_spans(stack, receiver):
    def get(i: int) -> str:
        return stack.request("GET", f"/messages/{i:064d}").headers["X-Request-ID"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(get, range(80)))
    pids = {spans_of(stack, receiver, rid)[0].resource["process.pid"] for rid in ids}
    assert len(pids) == 2  # WEB_CONCURRENCY=2: the post_fork hook set up tracing in both


def test_errors_are_logged_as_json_with_the_exception(stack):
    stack.redis.set(f"msg:{'e' * 64}", b"\xff")  # not UTF-8: only a bug or tampering does this
    r = stack.request("GET", f"/messages/{'e' * 64}")
    assert r.status_code == 500
    request_id = r.headers["X-Request-ID"]
    errors = [
        x for x in app_log(stack) if x.get("request_id") == request_id and x["level"] == "ERROR"
    ]
    assert len(errors) == 1
    assert "UnicodeDecodeError" in errors[0]["exception"]


def test_every_app_log_line_is_json_gunicorn_included(stack):
    lines = app_log(stack)
    assert any(
        line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines
    )
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


def test_tracing_off_without_an_endpoint(tmp_path, receiver):
    stack = make_stack(
        tmp_path, OTEL_SDK_DISABLED="true", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint
    )
    stack.start()
    try:
        r = stack.request("POST", "/messages", json={"message": "untraced"})
        assert r.status_code == 201
        request_id = r.headers["X-Request-ID"]
        assert edge_access_lines(stack, [request_id], 60)[0]["trace_id"] == ""
        # By default the app writes no line per request: the edge's is the access line.
        assert not [x for x in app_log(stack) if x.get("request_id") == request_id]
    finally:
        stack.stop()
    assert not [s for s in receiver.spans if s.attributes.get(REQUEST_ID) == request_id]
