"""When tracing is on: only the standard OTEL_* variables decide."""

from __future__ import annotations

import pytest

from service import telemetry
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
        ({}, "ParentBased{root:TraceIdRatioBased{0.1}"),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, "AlwaysOnSampler"),
        ({"OTEL_TRACES_SAMPLER": " ParentBased_Always_Off "}, "ParentBased{root:AlwaysOffSampler"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
         "TraceIdRatioBased{0.25}"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1"}, "ParentBased{root:TraceIdRatioBased{1.0}"),
    ],
)  # fmt: skip
def test_the_sampler_is_named_by_the_standard_variables(env, description):
    assert telemetry.sampler_from_env(env).get_description().startswith(description)


@pytest.mark.parametrize(
    "env",
    [{"OTEL_TRACES_SAMPLER": "sometimes"}, {"OTEL_TRACES_SAMPLER_ARG": "1.5"},
     {"OTEL_TRACES_SAMPLER_ARG": "-0.1"}, {"OTEL_TRACES_SAMPLER_ARG": "half"}],
)  # fmt: skip
def test_a_sampler_setting_that_makes_no_sense_stops_the_start(env):
    with pytest.raises(ValueError, match=r"OTEL_TRACES_SAMPLER|could not convert"):
        telemetry.sampler_from_env(env)
