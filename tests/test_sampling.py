"""The rate-limited sampler (service/sampling.py): a reservoir of N traces a second per
process, then a ratio by trace id; thread-safe; parent-based when asked; registered as an
OpenTelemetry sampler entry point that OTEL_TRACES_SAMPLER names, as an operator's own
sampler package would be. Time is a fake clock here: no assertion depends on sleeping."""

from __future__ import annotations

import itertools
import random
import sys
import threading
from importlib.metadata import entry_points

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from service import sampling, telemetry
from service.sampling import RateLimitedSampler, parse_arg

GROUP = "opentelemetry_traces_sampler"
PROBABILITY = "messages.sampling.probability"  # what a sampled span says of its odds
ids = random.Random(20261130)  # trace ids: seeded, so a failure can be replayed


class Clock:
    """Seconds, moved on by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trace_id() -> int:
    return ids.getrandbits(128)


def sampled(sampler: Sampler, parent=None, tid: int | None = None) -> bool:
    tid = trace_id() if tid is None else tid
    return sampler.should_sample(parent, tid, "request").decision.is_sampled()


def count(sampler: Sampler, n: int) -> int:
    return sum(sampled(sampler) for _ in range(n))


def remote_parent(is_sampled: bool):
    """The context a trusted caller's traceparent gives."""
    flags = TraceFlags(TraceFlags.SAMPLED if is_sampled else TraceFlags.DEFAULT)
    span = NonRecordingSpan(
        SpanContext(trace_id(), 0xB7AD6B7169203331, is_remote=True, trace_flags=flags)
    )
    return trace.set_span_in_context(span)


# --- the reservoir ---


def test_the_reservoir_grants_exactly_n_a_second_then_nothing_without_a_ratio():
    clock = Clock()
    sampler = RateLimitedSampler(3, 0.0, clock=clock)
    assert count(sampler, 50) == 3  # full at the start: a burst of N
    assert count(sampler, 50) == 0  # the same instant: nothing left
    clock.now += 1
    assert count(sampler, 50) == 3
    clock.now += 0.5
    assert count(sampler, 50) == 1  # 1.5 tokens: one trace, half a token kept
    clock.now += 0.5
    assert count(sampler, 50) == 2  # 0.5 + 1.5
    clock.now += 3600  # a quiet hour does not save up more than the burst
    assert count(sampler, 50) == 3


def test_over_a_long_run_the_reservoir_grants_the_burst_plus_the_rate():
    clock = Clock()
    sampler = RateLimitedSampler(3, 0.0, clock=clock)
    granted = 0
    for _ in range(64 * 100 + 1):  # from 0 to 100 s, 64 requests a second (exact in binary)
        granted += sampled(sampler)
        clock.now += 1 / 64
    assert granted == 3 + 3 * 100


def test_at_low_traffic_every_request_is_traced():
    clock = Clock()
    sampler = RateLimitedSampler(1, 0.0, clock=clock)
    for _ in range(20):
        assert sampled(sampler)
        clock.now += 1.0


def test_a_rate_under_one_a_second_still_allows_one_trace():
    clock = Clock()
    sampler = RateLimitedSampler(0.5, 0.0, clock=clock)  # burst: at least 1
    assert count(sampler, 10) == 1
    clock.now += 1
    assert count(sampler, 10) == 0
    clock.now += 1
    assert count(sampler, 10) == 1


def test_a_rate_of_zero_is_the_ratio_alone():
    sampler = RateLimitedSampler(0, 0.0, clock=Clock())
    assert count(sampler, 100) == 0
    ratio = RateLimitedSampler(0, 0.5, clock=Clock())
    for _ in range(200):
        tid = trace_id()
        assert sampled(ratio, tid=tid) == sampled(TraceIdRatioBased(0.5), tid=tid)


def test_a_clock_read_out_of_order_adds_no_tokens():
    clock = Clock()
    sampler = RateLimitedSampler(1, 0.0, clock=clock)
    assert count(sampler, 5) == 1
    clock.now -= 10  # another thread's older reading, say
    assert count(sampler, 5) == 0
    clock.now += 10.5
    assert count(sampler, 5) == 0  # half a second after the last grant
    clock.now += 0.5
    assert count(sampler, 5) == 1


# --- the ratio beyond it ---


def test_beyond_the_reservoir_the_ratio_decides_by_trace_id():
    sampler = RateLimitedSampler(1, 0.25, clock=Clock())
    assert sampled(sampler, tid=(7 << 64) | (2**64 - 1))  # the reservoir: any trace id
    assert not sampled(sampler, tid=2**64 - 1)  # low 64 bits above the bound: never
    assert sampled(sampler, tid=1 << 64)  # low 64 bits 0: always
    ratio = TraceIdRatioBased(0.25)
    for _ in range(2000):  # the same decision as TraceIdRatioBased for every trace id
        tid = trace_id()
        assert sampled(sampler, tid=tid) == sampled(ratio, tid=tid)


def test_the_ratio_is_about_right_over_many_trace_ids():
    sampler = RateLimitedSampler(1, 0.01, clock=Clock())
    n = 100_000
    got = count(sampler, n)
    # 1 from the reservoir, then Binomial(99,999, 0.01): 1,000 expected, sd 31.5; outside
    # 850..1,150 (4.7 sd) is a one-in-a-million event.
    assert 850 <= got - 1 <= 1150, got
    assert 8_000 <= count(RateLimitedSampler(0, 0.1, clock=Clock()), n) <= 12_000


def test_a_sampled_request_keeps_its_attributes_and_the_parents_trace_state():
    state = TraceState([("vendor", "x")])
    span = NonRecordingSpan(SpanContext(trace_id(), 1, is_remote=True, trace_state=state))
    parent = trace.set_span_in_context(span)
    sampler = RateLimitedSampler(1, 0.0, clock=Clock())
    kept = sampler.should_sample(parent, trace_id(), "request", attributes={"a": 1})
    assert kept.decision.is_sampled()
    assert dict(kept.attributes) == {"a": 1, PROBABILITY: 1.0}
    assert kept.trace_state == state
    dropped = sampler.should_sample(parent, trace_id(), "request", attributes={"a": 1})
    assert not dropped.decision.is_sampled()
    assert not dropped.attributes


# --- the probability, for estimating counts ---


def probability(sampler: Sampler, parent=None, tid: int | None = None) -> float | None:
    """The probability a sampled span is given; None when it is not sampled or has none."""
    tid = trace_id() if tid is None else tid
    result = sampler.should_sample(parent, tid, "request")
    assert result.decision.is_sampled() or not result.attributes
    return result.attributes.get(PROBABILITY) if result.decision.is_sampled() else None


def test_a_sampled_span_says_with_what_probability():
    clock = Clock()
    sampler = RateLimitedSampler(1, 0.25, clock=clock)
    assert probability(sampler) == 1.0  # from the reservoir: traced for certain
    assert probability(sampler, tid=(5 << 64) | 7) == 0.25  # beyond it, by the ratio
    assert probability(sampler, tid=2**64 - 1) is None  # not sampled: nothing to say
    clock.now += 1
    assert probability(sampler, tid=2**64 - 1) == 1.0  # a new token, whatever the trace id
    assert probability(RateLimitedSampler(0, 1.0, clock=clock)) == 1.0  # a ratio of 1


def test_a_trusted_callers_decision_has_no_probability_of_ours():
    sampler = sampling.parentbased_ratelimited("1000,1")
    assert sampled(sampler, remote_parent(True))
    assert probability(sampler, remote_parent(True)) is None  # the caller's odds, unknown here


def test_the_probabilities_of_the_sampled_spans_estimate_the_number_of_requests():
    """Summing 1/probability over the sampled spans counts the requests, reservoir and ratio
    together: 2,000 requests over 20 s (100 a second), 2 a second then 10% of the rest."""
    clock = Clock()
    sampler = RateLimitedSampler(2, 0.1, clock=clock)
    got = []
    for _ in range(2000):
        got.append(probability(sampler))
        clock.now += 0.01
    kept = [p for p in got if p is not None]
    assert kept.count(1.0) == 2 + 2 * 20 - 1  # the burst, then 2 a second (the last not due)
    estimate = sum(1 / p for p in kept)
    # The ratio's part: 1,959 requests, each counted as 10 with probability 0.1: sd
    # sqrt(1959 * 0.9 / 0.1) = 133. The trace ids are seeded, so this is one fixed draw.
    assert abs(estimate - 2000) < 4 * 133, estimate


# --- threads ---


def test_many_threads_share_one_budget():
    """gthread workers sample from several threads: the bucket never grants a token twice,
    nor loses one. Each request moves the clock on by 1/1024 s; 64 a second, burst 64."""
    ticks = itertools.count()
    sampler = RateLimitedSampler(64, 0.0, clock=lambda: next(ticks) / 1024)
    threads, per_thread = 16, 2000
    granted = [0] * threads
    start = threading.Barrier(threads)

    def run(k: int) -> None:
        start.wait()
        granted[k] = count(sampler, per_thread)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval)
    # Demand far over supply: every token is spent, none twice. Supply: the burst, plus 64
    # a second from the first request's tick to the last (the bucket was full at the first:
    # the tick before it added nothing), 31,999 ticks: 2,063.94 tokens, 2,063 whole ones.
    assert sum(granted) == 64 + 64 * (threads * per_thread - 1) // 1024 == 2063


# --- parent-based ---


def test_a_trusted_callers_decision_wins_and_does_not_draw_on_the_budget():
    sampler = ParentBased(root=RateLimitedSampler(1, 0.0, clock=Clock()))
    for _ in range(20):
        assert sampled(sampler, remote_parent(True))
        assert not sampled(sampler, remote_parent(False))
    assert sampled(sampler)  # the reservoir's token is still there
    assert not sampled(sampler)
    assert not sampled(sampling.parentbased_ratelimited("0,0"))  # no parent, no budget
    assert sampled(sampling.parentbased_ratelimited("0,0"), remote_parent(True))
    assert not sampled(sampling.parentbased_ratelimited("1000,1"), remote_parent(False))


def test_the_parentbased_factory_wraps_the_rate_limited_one():
    sampler = sampling.parentbased_ratelimited("3,0.2")
    assert isinstance(sampler, ParentBased)
    assert isinstance(sampler._root, RateLimitedSampler)
    assert (sampler._root.traces_per_second, sampler._root.ratio) == (3.0, 0.2)


def test_ratelimited_alone_ignores_the_parent():
    assert sampled(sampling.ratelimited("1,0"), remote_parent(False))  # the reservoir
    assert not sampled(sampling.ratelimited("0,0"), remote_parent(True))


# --- the argument ---


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [
        ("1,0.01", (1.0, 0.01)),
        (" 2 , 0.5 ", (2.0, 0.5)),
        ("3", (3.0, 0.0)),  # a rate alone: no ratio
        ("0.2", (0.2, 0.0)),
        ("0,0.1", (0.0, 0.1)),
        ("10,1", (10.0, 1.0)),
        (None, (1.0, 0.01)),  # the SDK passes None when the variable is unset
        ("", (1.0, 0.01)),
        (5, (5.0, 0.0)),
    ],
)
def test_the_argument_is_a_rate_and_a_ratio(arg, parsed):
    assert parse_arg(arg) == parsed
    sampler = sampling.ratelimited(arg)
    assert (sampler.traces_per_second, sampler.ratio) == parsed


@pytest.mark.parametrize(
    "arg", ["a", "1,b", "-1", "1,-0.1", "1,1.5", "nan", "inf", "1,nan", "1,0.1,2", ",0.1", "1,"]
)
def test_an_argument_that_makes_no_sense_says_which_variable(arg):
    for factory in (sampling.ratelimited, sampling.parentbased_ratelimited):
        with pytest.raises(ValueError, match=r"^OTEL_TRACES_SAMPLER_ARG=.*e\.g\. '1,0\.01'"):
            factory(arg)


def test_the_sampler_says_what_it_is():
    assert sampling.ratelimited("2,0.05").get_description() == (
        "RateLimited{2/s, then TraceIdRatioBased{0.05}}"
    )
    assert (
        sampling.parentbased_ratelimited("1,0.01")
        .get_description()
        .startswith("ParentBased{root:RateLimited{1/s, then TraceIdRatioBased{0.01}},")
    )


# --- registration and selection ---


def test_the_samplers_are_registered_as_entry_points():
    found = entry_points(group=GROUP)
    assert found["ratelimited"].value == "service.sampling:ratelimited"
    assert found["parentbased_ratelimited"].value == "service.sampling:parentbased_ratelimited"
    assert found["ratelimited"].dist.name == "message-service"
    assert found["ratelimited"].load() is sampling.ratelimited
    assert found["parentbased_ratelimited"].load() is sampling.parentbased_ratelimited


def test_the_sdk_finds_them_as_it_finds_its_own(monkeypatch):
    from opentelemetry.sdk._configuration import _import_sampler

    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "4,0.5")
    sampler = _import_sampler("parentbased_ratelimited")
    assert sampler.get_description().startswith(
        "ParentBased{root:RateLimited{4/s, then TraceIdRatioBased{0.5}}"
    )


def test_otel_traces_sampler_selects_them_through_the_entry_points(monkeypatch):
    sampler = telemetry.sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "parentbased_ratelimited", "OTEL_TRACES_SAMPLER_ARG": "7,0.1"}
    )
    assert isinstance(sampler, ParentBased)
    assert isinstance(sampler._root, RateLimitedSampler)
    assert (sampler._root.traces_per_second, sampler._root.ratio) == (7.0, 0.1)
    # Not a table of our own: take the entry point away and the name is unknown.
    registered = entry_points(group=GROUP)
    without = registered.__class__(ep for ep in registered if ep.name != "ratelimited")
    monkeypatch.setattr(telemetry, "entry_points", lambda group: without)
    with pytest.raises(ValueError, match=r"OTEL_TRACES_SAMPLER='ratelimited': no such sampler"):
        telemetry.sampler_from_env({"OTEL_TRACES_SAMPLER": "ratelimited"})


def test_the_default_is_the_budget():
    assert (telemetry.DEFAULT_SAMPLER, telemetry.DEFAULT_SAMPLER_ARG) == (
        "parentbased_ratelimited",
        "1,0.01",
    )
    assert sampling.DEFAULT_ARG == telemetry.DEFAULT_SAMPLER_ARG
    sampler = telemetry.sampler_from_env({})
    assert isinstance(sampler._root, RateLimitedSampler)
    assert (sampler._root.traces_per_second, sampler._root.ratio) == (1.0, 0.01)


OPERATORS_SAMPLER = """
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

def make(arg):
    return TraceIdRatioBased(float(arg) / 100)  # a percentage, say
"""


def test_an_operators_own_sampler_package_works_too(tmp_path, monkeypatch):
    """A package installed beside the service, registering its sampler as the SDK documents:
    OTEL_TRACES_SAMPLER names it like any other."""
    (tmp_path / "percent_sampler.py").write_text(OPERATORS_SAMPLER)
    dist = tmp_path / "percent_sampler-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: percent-sampler\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\npercent = percent_sampler:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sampler = telemetry.sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "percent", "OTEL_TRACES_SAMPLER_ARG": "25"}
    )
    assert sampler.get_description() == "TraceIdRatioBased{0.25}"
