"""`make bench-rules` (bench/rule_eval.py): its synthetic edge metrics, which promtool must
accept, and a short run end to end. (The figures of a short run mean nothing.)"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.rule_eval import (
    HOUR,
    RULE_FILES,
    RULES,
    STEP,
    Traffic,
    block_ranges,
    over_time_recordings,
    write_openmetrics,
)
from native.settings import ROOT

FIRST = 1_800_000_000 // STEP + 7  # not on an hour: the generator draws by the hour


def test_increments_are_the_same_however_the_span_is_cut():
    traffic = Traffic(rate=300, seed=1)
    whole = traffic.increments(FIRST, FIRST + 2 * HOUR)
    cut = FIRST + HOUR - 3
    parts = [traffic.increments(FIRST, cut), traffic.increments(cut + 1, FIRST + 2 * HOUR)]
    assert np.array_equal(whole, np.concatenate(parts, axis=1))
    assert whole.shape == (len(traffic.series), 2 * HOUR + 1)
    assert (whole >= 0).all()


def test_histograms_are_cumulative_and_inf_is_the_count():
    traffic = Traffic(rate=300, seed=1)
    rows = dict(zip(traffic.series, traffic.increments(FIRST, FIRST + HOUR), strict=True))
    prefix = 'edge_upstream_response_duration_seconds_bucket{route="/messages",status="201",'
    buckets = [row for name, row in rows.items() if name.startswith(prefix)]
    assert len(buckets) == 16  # mtail's 15 exported boundaries and +Inf
    assert all((a <= b).all() for a, b in itertools.pairwise(buckets))
    count = rows['edge_upstream_response_duration_seconds_count{route="/messages",status="201"}']
    assert np.array_equal(buckets[-1], count)
    requests = rows['edge_http_requests_total{route="/messages",method="POST",status="201"}']
    assert np.array_equal(count, requests)  # every 201 was the app's
    assert 250 * STEP * 0.28 / 2 < requests.mean() < 350 * STEP * 0.28 * 2


def test_promtool_backfills_the_openmetrics_written(tmp_path):
    traffic = Traffic(rate=300, seed=1)
    path = tmp_path / "edge.om"
    end = write_openmetrics(path, traffic, FIRST, FIRST + 40, [0.0] * len(traffic.series))
    again = write_openmetrics(tmp_path / "next.om", traffic, FIRST + 41, FIRST + 80, end)
    assert all(b >= a for a, b in zip(end, again, strict=True))  # counters continue
    lines = path.read_text().splitlines()
    assert lines[0] == "# TYPE edge_http_requests counter" and lines[-1] == "# EOF"
    for om in (path, tmp_path / "next.om"):
        argv = ["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q"]
        subprocess.run([*argv, str(om), str(tmp_path / "data")], check=True)
    ((low, high),) = block_ranges(tmp_path / "data")[:1]
    assert low == FIRST * STEP * 1000
    assert high == (FIRST + 40) * STEP * 1000 + 1  # a block's end is exclusive


def test_the_recordings_read_over_long_ranges_are_backfilled():
    texts = [(ROOT / RULES / name).read_text() for name in RULE_FILES]
    names = {rule["record"] for rule in over_time_recordings(texts)}
    assert {
        "slo:edge_api_requests:rate5m",
        "slo:edge_api_errors:rate5m",
        "slo:edge_api_answered:rate5m",
        "slo:edge_api_fast:rate5m",
    } <= names


@pytest.mark.stack
def test_a_short_run_measures_both_rule_sets_and_compares_the_slo_ratios(tmp_path):
    env = {
        **os.environ,
        "BENCH_CACHE_DIR": str(tmp_path),
        "BENCH_RULES_DAYS": "0.1",
        "BENCH_RULES_MINUTES": "1.1",  # the 1-minute group evaluates at least once
    }
    argv = [sys.executable, "-m", "bench.rule_eval"]
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| recording.yml;slo-long-windows |" in run.stdout
    assert "rule evaluation, new/old:" in run.stdout and "process CPU" in run.stdout
    assert "slo:edge_availability:error_ratio_rate30d" in run.stdout
    assert list(tmp_path.glob("rule-eval-*/state.json"))  # cached for the next run
