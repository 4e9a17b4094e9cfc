"""When tracing is on: only the standard OTEL_* variables decide. What the traces say about
the service (its resource) and which attribute names they use, unless the operator says
otherwise. How a request is sampled, in the app itself: on its span's own trace id, with the
sampler's result and probability on the span, and a trusted caller's decision honoured."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, TraceState

from service import telemetry
from service.app import create_app
from service.config import Settings
from service.telemetry import tracing_enabled

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
LOW_64_BITS = 2**64 - 1
PROBABILITY = "messages.sampling.probability"


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),  # no endpoint: make run's default, nothing to send to
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "TRUE "}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp"}, True),
    ],
)
def test_tracing_enabled(env, enabled):
    assert tracing_enabled(env) is enabled


@pytest.mark.parametrize(
    ("env", "description"),
    [
        # The default: per process, 1 trace a second, then 1% of the rest.
        ({}, "ParentBased{root:RateLimited{1/s, then TraceIdRatioBased{0.01}}"),
        (
            {"OTEL_TRACES_SAMPLER": "", "OTEL_TRACES_SAMPLER_ARG": ""},  # compose's unset
            "ParentBased{root:RateLimited{1/s, then TraceIdRatioBased{0.01}}",
        ),
        (
            {"OTEL_TRACES_SAMPLER_ARG": "5"},
            "ParentBased{root:RateLimited{5/s, then TraceIdRatioBased{0.0}}",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "ratelimited", "OTEL_TRACES_SAMPLER_ARG": "0.5, 0.1"},
            "RateLimited{0.5/s, then TraceIdRatioBased{0.1}}",
        ),
        ({"OTEL_TRACES_SAMPLER": "ratelimited"}, "RateLimited{1/s, then TraceIdRatioBased{0.01}}"),
        # The SDK's own samplers, as the SDK reads them (its names in any case).
        ({"OTEL_TRACES_SAMPLER": "always_on"}, "AlwaysOnSampler"),
        ({"OTEL_TRACES_SAMPLER": " ParentBased_Always_Off "}, "ParentBased{root:AlwaysOffSampler"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
            "TraceIdRatioBased{0.25}",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            "ParentBased{root:TraceIdRatioBased{0.1}",
        ),
        # No argument: the SDK's ratio, 1.0 (the service's default argument is not a ratio).
        ({"OTEL_TRACES_SAMPLER": "traceidratio"}, "TraceIdRatioBased{1.0}"),
    ],
)
def test_the_sampler_is_named_by_the_standard_variables(env, description):
    assert telemetry.sampler_from_env(env).get_description().startswith(description)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_SAMPLER": "sometimes"},
        {"OTEL_TRACES_SAMPLER_ARG": "1,1.5"},
        {"OTEL_TRACES_SAMPLER_ARG": "-1"},
        {"OTEL_TRACES_SAMPLER_ARG": "half"},
        {"OTEL_TRACES_SAMPLER_ARG": "1,0.01,5"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1,0.01"},
    ],
)
def test_a_sampler_setting_that_makes_no_sense_stops_the_start(env):
    with pytest.raises(ValueError, match=r"^OTEL_TRACES_SAMPLER"):
        telemetry.sampler_from_env(env)


@pytest.mark.parametrize(
    ("given", "seen"),
    [
        (None, "http,database"),  # stable HTTP and database names, the old ones dropped
        ("", "http,database"),  # compose passes an unset variable as empty
        ("http/dup", "http/dup"),  # the operator's choice, as given
        (" database ", "database"),
    ],
)
def test_stable_attribute_names_unless_the_operator_opts_otherwise(given, seen):
    env = {} if given is None else {"OTEL_SEMCONV_STABILITY_OPT_IN": given}
    assert telemetry.semconv_opt_in(env) == seen


@pytest.fixture
def operator_env(monkeypatch):
    """The resource variables the SDK reads from the process environment, cleared; the
    test sets the ones it needs."""
    for name in (
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_resource_names_the_service_its_revision_and_environment(operator_env):
    settings = Settings.from_env({"GIT_REVISION": "abc1234"})
    attributes = telemetry.trace_resource(settings).attributes
    assert attributes["service.name"] == "messages"
    assert attributes["service.version"] == "abc1234"
    assert attributes["deployment.environment.name"] == "development"
    assert "deployment.environment" not in attributes  # the deprecated name
    production = Settings.from_env({"DEPLOYMENT_ENVIRONMENT": "production"})
    assert telemetry.trace_resource(production).attributes["deployment.environment.name"] == (
        "production"
    )


def test_the_operators_resource_attributes_win_over_the_defaults(operator_env):
    operator_env.setenv(
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.version=2.0.1,deployment.environment.name=staging,service.namespace=shop",
    )
    settings = Settings.from_env({"GIT_REVISION": "abc1234", "DEPLOYMENT_ENVIRONMENT": "prod"})
    attributes = telemetry.trace_resource(settings).attributes
    assert attributes["service.version"] == "2.0.1"
    assert attributes["deployment.environment.name"] == "staging"
    assert attributes["service.namespace"] == "shop"
    assert attributes["service.name"] == "messages"  # service.namespace is not service.name
    operator_env.setenv("OTEL_SERVICE_NAME", "messages-canary")
    assert telemetry.trace_resource(settings).attributes["service.name"] == "messages-canary"


def test_an_operator_on_the_old_environment_name_gets_no_second_one(operator_env):
    operator_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    attributes = telemetry.trace_resource(Settings()).attributes
    assert attributes["deployment.environment"] == "staging"
    assert "deployment.environment.name" not in attributes


# --- sampling, in the app ---


@pytest.fixture
def traced(redis_url):
    """Makes a traced app, as a gunicorn worker has it (telemetry.tracer_provider, the app
    from create_app), with the given OTEL_TRACES_SAMPLER(_ARG); its spans are kept in memory.
    No global provider is set: the app depends on its arguments only."""
    exporter = InMemorySpanExporter()
    provider = telemetry.tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    apps = []

    def make(sampler: str, arg: str = ""):
        env = {
            "REDIS_URL": redis_url,
            "OTEL_TRACES_SAMPLER": sampler,
            "OTEL_TRACES_SAMPLER_ARG": arg,
        }
        apps.append(create_app(env, tracer_provider=provider))
        return apps[-1].test_client(), exporter

    yield make
    for app in apps:
        app.extensions["message_store"].close()


def server_spans(exporter: InMemorySpanExporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def ratio_keeps(trace_id: int, ratio: float) -> bool:
    """TraceIdRatioBased's rule, as any hop or collector with that ratio applies it."""
    return trace_id & LOW_64_BITS < ratio * 2**64


def test_the_ratio_decides_on_the_spans_own_trace_id(traced):
    client, exporter = traced("traceidratio", "0.25")
    for i in range(200):
        assert client.get(f"/messages/{i:064x}").status_code == 404
    spans = server_spans(exporter)
    assert 20 <= len(spans) <= 80  # Binomial(200, 0.25): 50, sd 6.1
    assert [s.context.trace_id for s in spans if not ratio_keeps(s.context.trace_id, 0.25)] == []
    # The Redis span under each has the same trace id, so it is the same decision.
    for redis_span in (s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT):
        assert ratio_keeps(redis_span.context.trace_id, 0.25)


def test_a_callers_trace_id_is_the_one_decided_on(traced):
    """A trusted caller's trace id, with a sampler that ignores the caller's flag: exactly the
    requests whose trace ids the ratio keeps are traced, and those above it are not."""
    client, exporter = traced("traceidratio", "0.25")
    trace_ids = [(0xABC << 64) | (i * 2**64 // 20 + 12345) for i in range(20)]
    for tid in trace_ids:
        parent = f"00-{tid:032x}-b7ad6b7169203331-01"
        client.get(f"/messages/{tid:064x}", headers={"traceparent": parent})
    traced_ids = [s.context.trace_id for s in server_spans(exporter)]
    assert traced_ids == [tid for tid in trace_ids if ratio_keeps(tid, 0.25)]
    assert len(traced_ids) == 5


def test_the_budget_and_the_ratio_record_their_probability_on_the_span(traced):
    # The service's sampler: 1 trace a second per process, then 25% of the rest.
    client, exporter = traced("parentbased_ratelimited", "1,0.25")
    requests = 200
    for i in range(requests):
        client.get(f"/messages/{i:064x}")
    spans = server_spans(exporter)
    by_ratio = [s for s in spans if s.attributes[PROBABILITY] == 0.25]
    from_budget = [s for s in spans if s.attributes[PROBABILITY] == 1.0]
    assert len(by_ratio) + len(from_budget) == len(spans)
    assert len(from_budget) >= 1  # the first request, at least
    assert [s for s in by_ratio if not ratio_keeps(s.context.trace_id, 0.25)] == []
    # Counts estimated from the spans: each stands for 1/probability requests. The ratio's
    # part: sd sqrt(199 * 0.75 / 0.25) = 24.4; 6 sd is a one-in-a-billion miss.
    estimate = sum(1 / s.attributes[PROBABILITY] for s in spans)
    assert abs(estimate - requests) < 6 * 24.4, estimate
    # The Redis spans of a trace say the same as its server span.
    for span in exporter.get_finished_spans():
        assert span.attributes[PROBABILITY] in (0.25, 1.0)


class OperatorsSampler(Sampler):
    """An operator's sampler that keeps every trace and says so in an attribute and in the
    trace state, naming the trace id it was asked about."""

    def should_sample(
        self,
        parent_context,
        trace_id,
        name,
        kind=None,
        attributes=None,
        links=None,
        trace_state=None,
    ):
        state = TraceState([("vendor", f"kept-{trace_id & 0xFFFF:04x}")])
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE, {"vendor.decided_on": f"{trace_id:032x}"}, state
        )

    def get_description(self) -> str:
        return "OperatorsSampler"


def test_the_samplers_attributes_and_trace_state_reach_the_spans(traced, monkeypatch):
    monkeypatch.setattr(telemetry, "sampler_from_env", lambda env: OperatorsSampler())
    client, exporter = traced("always_on")  # replaced by the operator's sampler above
    r = client.post("/messages", json={"message": "marked"})
    assert r.status_code == 201
    (server,) = server_spans(exporter)
    tid = server.context.trace_id
    assert server.attributes["vendor.decided_on"] == f"{tid:032x}"
    assert server.attributes["http.route"] == "/messages"  # the instrumentation's, kept too
    assert server.context.trace_state == TraceState([("vendor", f"kept-{tid & 0xFFFF:04x}")])
    # SET, then the PING that asks whether Redis could save it (service/store.py).
    redis_spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [s.name for s in redis_spans] == ["SET", "PING"]
    for redis_span in redis_spans:  # and travels on
        assert redis_span.context.trace_state == server.context.trace_state
    assert r.headers["traceresponse"].startswith(f"00-{tid:032x}-")


def test_a_trusted_callers_sampled_flag_still_decides(traced):
    # No budget and no ratio: only a caller can have a request traced.
    client, exporter = traced("parentbased_ratelimited", "0,0")
    caller = "0af7651916cd43dd8448eb211c80319c"
    client.get(f"/messages/{'a' * 64}")
    client.get(f"/messages/{'b' * 64}", headers={"traceparent": f"00-{'1' * 32}-{'2' * 16}-00"})
    client.get(
        f"/messages/{'c' * 64}",
        headers={"traceparent": f"00-{caller}-b7ad6b7169203331-01", "tracestate": "vendor=x"},
    )
    (server,) = server_spans(exporter)
    assert f"{server.context.trace_id:032x}" == caller
    assert f"{server.parent.span_id:016x}" == "b7ad6b7169203331"
    assert server.context.trace_state == TraceState([("vendor", "x")])
    assert PROBABILITY not in server.attributes  # the caller's odds are not ours to say


def test_the_server_span_names_the_request_id_in_the_services_namespace(traced):
    client, exporter = traced("always_on")
    r = client.get(f"/messages/{'d' * 64}", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    (server,) = server_spans(exporter)
    assert server.attributes["messages.request_id"] == "abc-123"
    assert "request_id" not in server.attributes  # no attribute without a namespace
