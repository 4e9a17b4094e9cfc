"""When tracing is on: only the standard OTEL_* variables decide. What the traces say about
the service (its resource) and which attribute names they use, unless the operator says
otherwise."""

from __future__ import annotations

import pytest

from service import telemetry
from service.config import Settings
from service.telemetry import tracing_enabled

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


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
