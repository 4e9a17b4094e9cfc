"""The benchmark's own code, in a short run: it starts both apps, measures every scenario,
and writes its table, JSON and plot. (The figures of a short run mean nothing; `make bench`
gives the real ones.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from native.stack import ROOT

pytestmark = pytest.mark.stack


def test_a_short_benchmark_run_measures_every_scenario_for_both_apps(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--no-sweep", "--no-scaling", "--seconds", "1",
         "--warmup", "0", "--reps", "1", "--connections", "4", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr  # non-zero: an invalid run
    (results,) = tmp_path.glob("bench-*.json")
    document = json.loads(results.read_text())
    pairs = {(row["via"], row["scenario"]) for row in document["comparison"]}
    assert pairs == {(v, s) for v in ("edge", "direct") for s in ("post", "hit", "miss")}
    for row in document["comparison"]:
        assert row["ours_rps"] > 0 and row["reference_rps"] > 0
        assert row["throughput_ratio"] == round(row["ours_rps"] / row["reference_rps"], 3)
    assert all(run["valid"] for run in document["runs"])
    assert document["spans_exported_in_comparison"] > 0  # ours ran with tracing on
    assert any(r["scenario"] == "plain" for r in document["medians"])  # nginx's ceiling
    assert results.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert "throughput_ratio" in out.stdout


def test_the_profiler_names_where_a_worker_spends_its_time(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.profile", "--seconds", "4", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Flask and Werkzeug" in out.stdout and "redis client" in out.stdout
    assert (tmp_path / "profile-post.svg").read_text().lstrip().startswith("<?xml")
