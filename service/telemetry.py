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
plus 1% of the requests beyond it (parentbased_ratelimited: service/sampling.py).

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
import random
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from flask import Flask, Response
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation import _semconv
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.wsgi import wsgi_getter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler
from opentelemetry.semconv.attributes.deployment_attributes import DEPLOYMENT_ENVIRONMENT_NAME
from opentelemetry.semconv.attributes.service_attributes import SERVICE_VERSION
from opentelemetry.util.http import parse_excluded_urls

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
# quiet hour) every request is traced, and under load the cost hardly grows: at 3,000
# requests a second over 5 workers, ~35 traces a second (5 + 1% of the rest) where a fixed
# 10% made 300, at 740-800 µs each (docs/performance.md). A trusted caller's trace context
# (see nginx.conf.template) decides for its own requests, and does not draw on the budget.
DEFAULT_SAMPLER = "parentbased_ratelimited"
DEFAULT_SAMPLER_ARG = sampling.DEFAULT_ARG  # traces a second per process, ratio of the rest
# Where OTEL_TRACES_SAMPLER's names are found, as the SDK finds them: the SDK's own samplers,
# ours (pyproject.toml), and those of any package the operator installs.
SAMPLER_ENTRY_POINTS = "opentelemetry_traces_sampler"
# The SDK hands these a float (its default 1.0 when no argument is given), all others the
# OTEL_TRACES_SAMPLER_ARG string, or None (opentelemetry.sdk._configuration._import_sampler).
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
# Whether the request being served was sampled: a context variable, not a lookup through
# Flask's request proxy, because the hooks that read it run on every request.
_traced: contextvars.ContextVar[bool] = contextvars.ContextVar("messages_traced", default=False)


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
    resource = trace_resource(Settings.from_env(env))
    # The exporter's endpoint, headers and timeout, and the batch processor's sizes and delays
    # are read from the environment here. The sampler is not the provider's: instrument_app()
    # samples each request before tracing starts, so every span made is one to keep.
    provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def client_tracer() -> Callable[[Any], None] | None:
    """What makes a Redis client trace its commands, if this process set up tracing. The
    store uses an instrumented client for traced requests only: instrumenting every client
    (RedisInstrumentor().instrument()) puts a wrapper, and a context lookup, on every command
    of every request."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return None
    return functools.partial(RedisInstrumentor.instrument_client, tracer_provider=provider)


def instrument_app(app: Flask, env: Mapping[str, str] = os.environ) -> None:
    """Give every sampled request a server span, if this process set up tracing."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return
    excluded = env.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS", EXCLUDED_URLS)
    FlaskInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=excluded)
    sampled = _sampling_decision(sampler_from_env(env), excluded)
    speedups.trace_sampled_requests_only(app, sampled, _traced)
    app.after_request(_add_traceresponse)


def _sampling_decision(sampler: Sampler, excluded: str) -> Callable[[WSGIEnvironment], bool]:
    """Whether to trace a request, decided from its WSGI environ before any tracing work."""
    not_traced = parse_excluded_urls(excluded)
    # Trace ids are drawn again by the SDK for the spans: this one only feeds the ratio.
    # (A downstream service sampling by trace id would see different odds; we call none.)
    draw = random.Random().getrandbits  # noqa: S311 (a sampling coin, not a secret)

    def sampled(environ: WSGIEnvironment) -> bool:
        if not_traced.url_disabled(environ.get("PATH_INFO", "")):
            return False
        parent = None
        if "HTTP_TRACEPARENT" in environ:  # passed on from trusted networks only (nginx)
            parent = propagate.extract(environ, getter=wsgi_getter)
        decision = sampler.should_sample(parent, draw(128), "request").decision
        return decision is Decision.RECORD_AND_SAMPLE  # Decision.is_sampled(), typed

    return sampled


def _add_traceresponse(response: Response) -> Response:
    """Name a traced request's trace in W3C Trace Context's `traceresponse` header: nginx logs
    its trace id in the request's access line, and does not pass the header on to clients
    (nginx.conf.template)."""
    if _traced.get():
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
