"""OpenTelemetry tracing, configured only by the standard OTEL_* environment variables.

setup_tracing() runs in each gunicorn worker after the fork (gunicorn.conf.py: post_fork), so
no exporter thread or connection is shared between processes; create_app() then instruments
the app if a tracer provider was set up. Tracing is off unless an OTLP endpoint is given
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and OTEL_SDK_DISABLED=true
or OTEL_TRACES_EXPORTER=none turn it off in any case.

The sampling decision comes first: a request that is not sampled never enters the Flask
instrumentation, which otherwise does most of its work (attributes, context, a non-recording
span) before the sampler has its say, and its Redis calls go through a Redis client without
instrumentation (the store keeps one of each: see client_tracer). Both lean on the
instrumentations' internals, and live in service/speedups.py. Benchmarked in
docs/performance.md. The sampler is the one OTEL_TRACES_SAMPLER(_ARG) name, found as the SDK
finds it (see sampler_from_env); by default a budget per worker process, 1 trace a second
plus 1% of the requests beyond it (parentbased_ratelimited: service/sampling.py). It decides
on the trace id the request's spans then get, and its result (attributes, trace state) is
theirs: the tracer provider's id generator and sampler hand both over (see tracer_provider).

Spans carry the stable semantic-convention names (http.request.method, url.path,
db.system.name, db.query.text, server.address, ...) unless OTEL_SEMCONV_STABILITY_OPT_IN says
otherwise (see _opt_in_to_stable_semconv), and the resource names the service, its revision and its
deployment environment (see trace_resource).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, NamedTuple

from flask import Flask, Response
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation import _semconv
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.wsgi import wsgi_getter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult
from opentelemetry.semconv.attributes.deployment_attributes import DEPLOYMENT_ENVIRONMENT_NAME
from opentelemetry.semconv.attributes.service_attributes import SERVICE_VERSION
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.http import parse_excluded_urls
from opentelemetry.util.types import Attributes

from service import sampling, speedups
from service.config import Settings

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

SERVICE_NAME = "messages"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise
# The name semantic conventions 1.27 and later (the semconv package here marks it stable) give
# the deployment environment; "deployment.environment", the SDK's older
# resources.DEPLOYMENT_ENVIRONMENT, is deprecated. An operator who still sets the old name in
# OTEL_RESOURCE_ATTRIBUTES keeps it, and gets no default under the new name beside it.
LEGACY_DEPLOYMENT_ENVIRONMENT = "deployment.environment"
# Stable HTTP and database attribute names, old ones dropped, unless the operator's
# OTEL_SEMCONV_STABILITY_OPT_IN says otherwise ("http/dup,database/dup": both). "http" also
# renames the Redis spans' net.peer.* to server.*. Read by the instrumentations from
# os.environ, once per process: see _opt_in_to_stable_semconv.
SEMCONV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"
DEFAULT_SEMCONV_OPT_IN = "http,database"
# Health checks are polled constantly and /metrics never reaches the app: not worth a trace.
EXCLUDED_URLS = "healthz,readyz,metrics"
# Tracing's cost bounded by a rate, not a ratio (service/sampling.py), unless
# OTEL_TRACES_SAMPLER(_ARG) say otherwise: per process, 1 trace a second plus 1% of the
# requests beyond it. At low traffic (under a request a second per worker: development, a
# quiet hour) every request is traced, and under load the cost hardly grows, where a fixed
# ratio's grows with the traffic (figures: docs/performance.md). A trusted caller's trace context
# (see nginx.conf.template) decides for its own requests, and does not draw on the budget.
DEFAULT_SAMPLER = "parentbased_ratelimited"
DEFAULT_SAMPLER_ARG = sampling.DEFAULT_ARG  # traces a second per process, ratio of the rest
# Where OTEL_TRACES_SAMPLER's names are found, as the SDK finds them: the SDK's own samplers,
# ours (pyproject.toml), and those of any package the operator installs.
SAMPLER_ENTRY_POINTS = "opentelemetry_traces_sampler"
# The SDK hands these a float (its default 1.0 when no argument is given), all others the
# OTEL_TRACES_SAMPLER_ARG string, or None (opentelemetry.sdk._configuration._import_sampler).
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


class _Decision(NamedTuple):
    """The sampler's answer for a traced request, and the trace id it was given."""

    trace_id: int
    result: SamplingResult


# The decision for the request being served, None when it is not traced: a context variable,
# not a lookup through Flask's request proxy, because the hooks that read it run on every
# request. Set around the traced app (service/speedups.py), read by the provider.
_decision: contextvars.ContextVar[_Decision | None] = contextvars.ContextVar(
    "messages_sampling_decision", default=None
)


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* settings ask for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def sampler_from_env(env: Mapping[str, str] = os.environ) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG name, chosen as the SDK
    chooses it (opentelemetry.sdk._configuration._import_sampler): the factory registered
    under that name in the opentelemetry_traces_sampler entry-point group, called with the
    argument. Empty counts as not given, as compose passes an unset variable. Where the SDK
    logs a warning and falls back to its own default, a name or an argument that makes no
    sense stops the start here."""
    given = (env.get("OTEL_TRACES_SAMPLER") or "").strip() or DEFAULT_SAMPLER
    found = entry_points(group=SAMPLER_ENTRY_POINTS)
    # Exactly as registered, or the SDK's own names in any case (as its default sampler reads
    # OTEL_TRACES_SAMPLER: opentelemetry.sdk.trace.sampling._get_from_env_or_default).
    name = given if given in found.names else given.lower()
    if name not in found.names:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER={given!r}: no such sampler; installed: "
            f"{', '.join(sorted(found.names))}"
        )
    # Unset: None, as the SDK passes it; ours then applies its default (sampling.DEFAULT_ARG).
    arg: str | float | None = env.get("OTEL_TRACES_SAMPLER_ARG") or None
    if name in RATIO_SAMPLERS:
        try:
            arg = 1.0 if arg is None else float(arg)
        except ValueError:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER_ARG={arg!r}: {name} takes a ratio between 0 and 1"
            ) from None
    factory = next(iter(found.select(name=name))).load()
    try:
        sampler = factory(arg)
    except Exception as exc:
        detail = str(exc)
        if "OTEL_TRACES_SAMPLER_ARG" not in detail:
            detail = f"OTEL_TRACES_SAMPLER_ARG={arg!r}: {exc}"
        raise ValueError(f"OTEL_TRACES_SAMPLER={name}: {detail}") from exc
    if not isinstance(sampler, Sampler):
        raise ValueError(f"OTEL_TRACES_SAMPLER={name}: {factory} made {sampler!r}, no Sampler")
    return sampler


def semconv_opt_in(env: Mapping[str, str] = os.environ) -> str:
    """The OTEL_SEMCONV_STABILITY_OPT_IN the instrumentations are to see: the operator's, if
    given (empty counts as not given, as compose passes an unset variable), else ours."""
    return (env.get(SEMCONV_OPT_IN) or "").strip() or DEFAULT_SEMCONV_OPT_IN


def _opt_in_to_stable_semconv(env: Mapping[str, str]) -> None:
    """Put semconv_opt_in() where the instrumentations look for it, before they look.

    opentelemetry-instrumentation 0.66b1 (_semconv.py) reads OTEL_SEMCONV_STABILITY_OPT_IN
    from os.environ, not at import but at the first instrumentation in the process
    (FlaskInstrumentor.instrument_app, RedisInstrumentor.instrument_client, the WSGI
    middleware), and keeps the answer for the life of the process in a class attribute that a
    fork copies. Each instrumentation also fixes its mode when it is applied. In a gunicorn
    worker, setup_tracing() runs in post_fork, before create_app() instruments anything, and
    the master instruments nothing (the app is not preloaded), so the value set here is the
    one read. Honoured, comma-separated, case-sensitive: http, http/dup, database,
    database/dup (and gen_ai_latest_experimental); a /dup value wins over its plain one.
    """
    os.environ[SEMCONV_OPT_IN] = semconv_opt_in(env)
    # Too late if it was read already (a preloaded app, or a release that reads it on import).
    stability = getattr(_semconv, "_OpenTelemetrySemanticConventionStability", None)
    if getattr(stability, "_initialized", False):
        logging.getLogger(__name__).warning(
            "%s was read before tracing was set up in this process: spans keep the "
            "attribute names it chose then",
            SEMCONV_OPT_IN,
        )


def trace_resource(settings: Settings) -> Resource:
    """This process's resource: the service's name, version (its revision) and deployment
    environment, unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES give them."""
    # Resource.create() puts the attributes it is given over the operator's: leave out the
    # ones the operator gave, read as the SDK reads them.
    given = OTELResourceDetector().detect().attributes
    defaults: dict[str, str] = {
        "service.name": SERVICE_NAME,
        SERVICE_VERSION: settings.revision,
        DEPLOYMENT_ENVIRONMENT_NAME: settings.deployment_environment,
    }
    if LEGACY_DEPLOYMENT_ENVIRONMENT in given:
        del defaults[DEPLOYMENT_ENVIRONMENT_NAME]
    attributes: dict[str, str | int] = {k: v for k, v in defaults.items() if k not in given}
    attributes["process.pid"] = os.getpid()
    return Resource.create(attributes)


def setup_tracing(env: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """Make this process's tracer provider (batching, OTLP/HTTP) and trace Redis calls."""
    if not tracing_enabled(env):
        return None
    _opt_in_to_stable_semconv(env)
    provider = tracer_provider(trace_resource(Settings.from_env(env)))
    # The exporter's endpoint, headers and timeout, and the batch processor's sizes and delays
    # are read from the environment here.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracer_provider(resource: Resource | None = None) -> TracerProvider:
    """A tracer provider whose spans take the sampling decision made for their request.

    The decision is made before any tracing work (see _sampling_decision), on a trace id
    drawn then: the provider's id generator gives that id to the request's server span, and
    its sampler gives the request's spans the sampler's result (decision, attributes, trace
    state). So the trace id a span carries is the one it was sampled on, as a downstream
    service or collector sampling by trace id sees it."""
    return TracerProvider(
        resource=resource, sampler=_DecidedSampler(), id_generator=_DecidedTraceIds()
    )


class _DecidedTraceIds(RandomIdGenerator):
    """The SDK's random ids, except for a traced request's server span (the one span
    without a parent there): the trace id its sampling decision was made on."""

    def generate_trace_id(self) -> int:
        decision = _decision.get()
        return super().generate_trace_id() if decision is None else decision.trace_id


class _DecidedSampler(Sampler):
    """The decision made for the request, for the spans of its trace: its server span and
    the Redis spans under it, with the sampler's attributes and trace state."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        decision = _decision.get()
        if decision is None or decision.trace_id != trace_id:
            # Not a traced request's span (none is made today): kept, as every span was
            # before the decision moved ahead of tracing.
            return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes)
        made = decision.result
        # The span's own attributes (the instrumentation's), and what the sampler added.
        return SamplingResult(
            made.decision, {**(attributes or {}), **made.attributes}, made.trace_state
        )

    def get_description(self) -> str:
        return "DecidedBeforeTracing"


def process_tracer_provider() -> TracerProvider | None:
    """The tracer provider this process set up (setup_tracing: a gunicorn worker's, in
    post_fork), if any."""
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def client_tracer(provider: TracerProvider | None) -> Callable[[Any], None] | None:
    """What makes a Redis client trace its commands to provider (None: no tracing). The
    store uses an instrumented client for traced requests only: instrumenting every client
    (RedisInstrumentor().instrument()) puts a wrapper, and a context lookup, on every command
    of every request."""
    if provider is None:
        return None
    return functools.partial(RedisInstrumentor.instrument_client, tracer_provider=provider)


def instrument_app(app: Flask, provider: TracerProvider | None, env: Mapping[str, str]) -> None:
    """Give every sampled request a server span, traced by provider (None: no tracing), as
    env's OTEL_TRACES_SAMPLER(_ARG) and OTEL_PYTHON_FLASK_EXCLUDED_URLS say."""
    if provider is None:
        return
    excluded = env.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS", EXCLUDED_URLS)
    FlaskInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=excluded)
    decide = _sampling_decision(sampler_from_env(env), excluded)
    speedups.trace_sampled_requests_only(app, decide, _decision)
    app.after_request(_add_traceresponse)


def _sampling_decision(
    sampler: Sampler, excluded: str
) -> Callable[[WSGIEnvironment], _Decision | None]:
    """Whether to trace a request, decided from its WSGI environ before any tracing work, on
    the trace id its spans will have (see tracer_provider)."""
    not_traced = parse_excluded_urls(excluded)
    ids = RandomIdGenerator()  # as the SDK draws a trace id for a span without a parent

    def decide(environ: WSGIEnvironment) -> _Decision | None:
        if not_traced.url_disabled(environ.get("PATH_INFO", "")):
            return None
        parent = None
        trace_id = None
        if "HTTP_TRACEPARENT" in environ:  # passed on from trusted networks only (nginx)
            parent = propagate.extract(environ, getter=wsgi_getter)
            context = trace.get_current_span(parent).get_span_context()
            if context.is_valid:  # the span's trace id is then its parent's (Tracer.start_span)
                trace_id = context.trace_id
        if trace_id is None:
            trace_id = ids.generate_trace_id()
        # The span's name and attributes are not known yet: the instrumentation makes them.
        result = sampler.should_sample(parent, trace_id, "request", SpanKind.SERVER)
        if result.decision is not Decision.RECORD_AND_SAMPLE:  # Decision.is_sampled(), typed
            return None
        return _Decision(trace_id, result)

    return decide


def _add_traceresponse(response: Response) -> Response:
    """Name a traced request's trace in W3C Trace Context's `traceresponse` header: nginx logs
    its trace id in the request's access line, and does not pass the header on to clients
    (nginx.conf.template)."""
    if _decision.get() is not None:
        context = trace.get_current_span().get_span_context()
        response.headers["traceresponse"] = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        )
    return response


def shutdown() -> None:
    """Export the spans still queued (a worker is exiting)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
