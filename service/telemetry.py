"""OpenTelemetry tracing, configured only by the standard OTEL_* environment variables.

setup_tracing() runs in each gunicorn worker after the fork (gunicorn.conf.py: post_fork), so
no exporter thread or connection is shared between processes; create_app() then instruments
the app if a tracer provider was set up. Tracing is off unless an OTLP endpoint is given
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and OTEL_SDK_DISABLED=true
or OTEL_TRACES_EXPORTER=none turn it off in any case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SERVICE_NAME = "messages"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise
# Health checks are polled constantly and /metrics never reaches the app: not worth a trace.
EXCLUDED_URLS = "healthz,readyz,metrics"


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* settings ask for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def setup_tracing(env: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """Make this process's tracer provider (batching, OTLP/HTTP) and trace Redis calls."""
    if not tracing_enabled(env):
        return None
    attributes: dict[str, str | int] = {"process.pid": os.getpid()}
    if not env.get("OTEL_SERVICE_NAME") and "service.name" not in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = SERVICE_NAME
    # The sampler (OTEL_TRACES_SAMPLER, _ARG), the exporter's endpoint, headers and timeout,
    # and the batch processor's sizes and delays are all read from the environment here.
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    return provider


def instrument_app(app: Flask, env: Mapping[str, str] = os.environ) -> None:
    """Give every request a server span, if this process set up tracing."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return
    excluded = env.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS", EXCLUDED_URLS)
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider, excluded_urls=excluded)


def shutdown() -> None:
    """Export the spans still queued (a worker is exiting)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
