"""A sampler whose cost is bounded by a rate, not a ratio: N traces a second, then a ratio.

A fixed ratio traces more the busier the service is, and a traced request costs many times
an untraced one (docs/performance.md): far more traces than anyone reads.
RateLimitedSampler, after AWS X-Ray's reservoir ("1 a second and 5% beyond it") and Jaeger's
rate-limiting sampler, keeps a token bucket of N traces a second per process (burst N, at
least 1) and samples the requests beyond it by TraceIdRatioBased: every request is traced at
low traffic, and under load the cost grows only by the ratio.

Registered as OpenTelemetry sampler entry points (pyproject.toml,
[project.entry-points.opentelemetry_traces_sampler]), so OTEL_TRACES_SAMPLER names them like
the SDK's own samplers:

- ``ratelimited``: root decisions only (any parent's sampled flag is ignored);
- ``parentbased_ratelimited``: ParentBased around it, so a (trusted) caller's sampled flag
  decides for its requests, and only requests without a parent draw on the budget.

OTEL_TRACES_SAMPLER_ARG is ``<traces per second>,<ratio>``, e.g. ``1,0.01``; a single number
is the rate with ratio 0; unset or empty is DEFAULT_ARG. A rate of 0 leaves the ratio alone
(TraceIdRatioBased). The budget is per process: each gunicorn worker has its own bucket.

A sampled span carries the probability it was sampled with (PROBABILITY_ATTRIBUTE), so that
counts can be estimated from spans: the sum of 1/probability over them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

ARG_VARIABLE = "OTEL_TRACES_SAMPLER_ARG"
# What the factories make of an unset or empty argument: the service's default
# (service/telemetry.py, DEFAULT_SAMPLER_ARG, says why).
DEFAULT_ARG = "1,0.01"
# Not W3C tracestate's `ot=th:...` (OpenTelemetry's probability sampling): a threshold there
# says the span was kept because the last 56 bits of its trace id are at or above it, and
# TraceIdRatioBased keeps the 64 low bits below ratio * 2^64 instead. No semantic convention
# names it yet.
PROBABILITY_ATTRIBUTE = "messages.sampling.probability"


class RateLimitedSampler(Sampler):
    """Samples up to `traces_per_second` root spans a second (a token bucket holding at most
    max(traces_per_second, 1), full at the start), and `ratio` of the others by trace id.

    Thread-safe: gthread workers call should_sample() from several threads at once. `clock`
    (seconds, monotonic) is there for the tests.
    """

    def __init__(
        self,
        traces_per_second: float,
        ratio: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(traces_per_second) and traces_per_second >= 0):
            raise ValueError(f"traces per second must be 0 or more, not {traces_per_second}")
        if not (math.isfinite(ratio) and 0 <= ratio <= 1):
            raise ValueError(f"the ratio must be between 0 and 1, not {ratio}")
        self._rate = float(traces_per_second)
        self._burst = max(self._rate, 1.0) if self._rate > 0 else 0.0
        self._ratio = TraceIdRatioBased(ratio)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self._burst
        self._last = clock()

    @property
    def traces_per_second(self) -> float:
        return self._rate

    @property
    def ratio(self) -> float:
        return self._ratio.rate

    def _take_token(self) -> bool:
        """Whether the reservoir has a trace left for this moment (and spend it)."""
        if not self._burst:
            return False
        with self._lock:
            now = self._clock()
            elapsed = now - self._last
            if elapsed > 0:  # a clock read before another thread's: nothing to add
                self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
                self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False

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
        # Both keep the parent's trace state, and the attributes of a sampled span.
        sampler: Sampler = self._ratio
        probability = self._ratio.rate
        if self._take_token():
            sampler, probability = ALWAYS_ON, 1.0
        result = sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is not Decision.RECORD_AND_SAMPLE:  # Decision.is_sampled(), typed
            return result
        # A request that finds a token is traced for certain, one that does not with the
        # ratio's odds, whatever came before it: 1/probability is how many requests each
        # stands for (Horvitz-Thompson), whatever the traffic.
        return SamplingResult(
            result.decision,
            {**result.attributes, PROBABILITY_ATTRIBUTE: probability},
            result.trace_state,
        )

    def get_description(self) -> str:
        return f"RateLimited{{{self._rate:g}/s, then {self._ratio.get_description()}}}"


def parse_arg(arg: str | float | None) -> tuple[float, float]:
    """OTEL_TRACES_SAMPLER_ARG as (traces per second, ratio): "<rate>,<ratio>" or "<rate>"."""
    text = DEFAULT_ARG if arg is None or str(arg).strip() == "" else str(arg).strip()
    parts = [part.strip() for part in text.split(",")]
    problem = f"{ARG_VARIABLE}={arg!r}: expected '<traces per second>,<ratio>', e.g. '1,0.01'"
    if len(parts) > 2:
        raise ValueError(problem)
    try:
        rate, ratio = float(parts[0]), float(parts[1]) if len(parts) == 2 else 0.0
    except ValueError:
        raise ValueError(problem) from None
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"{problem} (traces per second: 0 or more)")
    if not (math.isfinite(ratio) and 0 <= ratio <= 1):
        raise ValueError(f"{problem} (ratio: between 0 and 1)")
    return rate, ratio


def ratelimited(arg: str | float | None = None) -> RateLimitedSampler:
    """The `ratelimited` entry point: the SDK calls it with OTEL_TRACES_SAMPLER_ARG (None
    when unset)."""
    return RateLimitedSampler(*parse_arg(arg))


def parentbased_ratelimited(arg: str | float | None = None) -> ParentBased:
    """The `parentbased_ratelimited` entry point: a parent's sampled flag decides; requests
    without a parent are sampled by ratelimited(arg)."""
    return ParentBased(root=ratelimited(arg))
