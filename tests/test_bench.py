"""The benchmark's own code, in short runs: each wrk mode against a started target (what it
asks for, and what it gets), the ceiling's nginx, and both modes of `make bench` end to end.
(The figures of a short run mean nothing; `make bench` gives the real ones.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.ceiling import TEMPLATE, Answer, start_ceiling
from bench.digests import HOT_MESSAGE, Digests, check_served, cold_messages, hit_messages, store
from bench.measure import Load, measure, run_wrk
from bench.supervision import kind_from
from bench.targets import EDGE, ServerConfig, Target, start
from native.configs import NGINX_TEMPLATE
from native.settings import ROOT
from tests.harness import CERT

pytestmark = pytest.mark.stack

COLD_RATE = 20_000  # digests per second of a cold run: far above what this target serves
LOAD = Load(threads=2, connections=4)  # two threads: the cold digests are split between them
DIGEST_PATH = re.compile(r"^/messages/([0-9a-f]{64})$")


class Seeded:
    """A started target (the service in a harness stack) with messages stored in its Redis."""

    def __init__(self, target: Target, folder: Path) -> None:
        self.target = target
        client = target.redis()
        self.hit = store(client, hit_messages(50))
        (self.hot,) = store(client, [HOT_MESSAGE])
        self.cold = store(client, cold_messages(2 * COLD_RATE))
        self.digests = Digests(folder, self.hit, self.hot, self.cold, COLD_RATE)
        self.log = target.stack.log_dir / "nginx.log"  # the edge's JSON access lines

    def measure(self, scenario: str):
        """One 1 s run through the edge, no warm-up; (result, the edge's lines for it)."""
        offset = self.settled_size()  # earlier requests' lines written out
        result = measure(self.target, EDGE, scenario, 1, 0, LOAD, self.digests, "test")
        return result, self.edge_lines(offset, result.requests)

    def settled_size(self) -> int:
        """The log's size once nginx wrote out its buffer (flushed every second)."""
        size = -1
        while size != self.log.stat().st_size:
            size = self.log.stat().st_size
            time.sleep(1.2)
        return size

    def edge_lines(self, offset: int, at_least: int) -> list[dict]:
        """The access lines nginx wrote after `offset`, once its buffer (flushed every
        second) holds no more."""
        lines: list[dict] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(1.2)
            with self.log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode()
            found = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            if len(found) >= at_least and len(found) == len(lines):
                return found
            lines = found
        raise AssertionError(f"{len(lines)} access lines, fewer than {at_least}")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    folder = tmp_path_factory.mktemp("bench-target")
    target = start("ours", ServerConfig(2, "sync", 1), folder / "stack", {})
    try:
        yield Seeded(target, folder / "digests")
    finally:
        target.stop()


def answered(lines: list[dict]) -> list[dict]:
    """The lines of requests answered (499: wrk closed the connection mid-request at its end)."""
    assert sum(1 for line in lines if line["status"] == 499) <= LOAD.connections
    return [line for line in lines if line["status"] != 499]


def digests_asked(lines: list[dict]) -> list[str]:
    """The digest each line's request asked for (every line must ask for one)."""
    matches = [DIGEST_PATH.match(line["uri"]) for line in lines]
    assert all(matches), [line["uri"] for line, m in zip(lines, matches, strict=True) if not m]
    return [m.group(1) for m in matches if m]


def test_stored_messages_are_served_by_the_api(seeded):
    pairs = [
        (seeded.hot, HOT_MESSAGE),
        (seeded.cold[-1], cold_messages(2 * COLD_RATE)[-1]),
        (seeded.hit[7], hit_messages(50)[7]),
    ]
    last = check_served(seeded.target.url(EDGE), pairs)
    assert last.content == b'{"message":"' + hit_messages(50)[7].encode() + b'"}\n'
    with pytest.raises(AssertionError):
        check_served(seeded.target.url(EDGE), [(seeded.hot, "another message")])


def test_hot_asks_for_one_stored_digest_again_and_again(seeded):
    result, lines = seeded.measure("hot")
    assert result.valid and result.requests > 10, result
    assert all(line["status"] == 200 for line in answered(lines))
    assert set(digests_asked(lines)) == {seeded.hot}
    assert result.cpu_us_per_request["nginx"] > 0  # the app's: ~0, the edge caches the answer


def test_cold_asks_for_stored_digests_each_once(seeded):
    result, lines = seeded.measure("cold")
    assert result.valid and result.requests > 10, result
    assert all(line["status"] == 200 for line in answered(lines))
    assert all(line["cache"] == "MISS" for line in answered(lines) if "cache" in line)
    asked = digests_asked(lines)
    assert len(asked) >= result.requests
    assert not [d for d, n in Counter(asked).items() if n > 1]  # none twice
    assert set(asked) <= set(seeded.cold[:COLD_RATE])  # from this run's slice
    # The next run gets the next slice: nothing this run could have asked for.
    later = seeded.digests.file_for("cold", 1).read_text().split()
    assert not set(later) & set(asked) and set(later) <= set(seeded.cold)


def test_a_cold_run_that_runs_out_of_digests_says_so(seeded, tmp_path):
    few = tmp_path / "few.txt"
    few.write_text("\n".join(seeded.cold[-10:]) + "\n")
    summary = run_wrk(seeded.target.url(EDGE), "cold", 1, LOAD, str(few), "few", "2")
    assert summary["exhausted"] > 0
    assert summary["status_errors"] >= summary["requests"] - 10  # the rest: unknown, 404


def test_miss_asks_for_unknown_digests(seeded):
    result, lines = seeded.measure("miss")
    assert result.valid and result.requests > 10, result  # valid: every answer a 404
    assert all(line["status"] == 404 for line in answered(lines))
    asked = digests_asked(lines)
    assert not set(asked) & ({seeded.hot} | set(seeded.hit) | set(seeded.cold))


def test_miss1_asks_every_connection_for_one_unknown_digest(seeded):
    result, lines = seeded.measure("miss1")
    assert result.valid and result.requests > 10, result  # valid: every answer a 404
    assert all(line["status"] == 404 for line in answered(lines))
    (asked,) = set(digests_asked(lines))
    assert asked not in {seeded.hot, *seeded.hit, *seeded.cold}


def statements(path: Path, directive: str) -> set[str]:
    """A template's statements of one directive (comments and layout left out)."""
    text = " ".join(line.split(" #")[0].strip() for line in path.read_text().splitlines())
    return {" ".join(m.split()) for m in re.findall(rf"(?<![\w$]){directive} [^;]*;", text)}


def test_the_ceiling_has_the_edges_tls_settings_and_log_formats():
    edge = {d: statements(NGINX_TEMPLATE, d) for d in ("ssl_[a-z_]+", "log_format")}
    assert len(edge["ssl_[a-z_]+"]) == 9 and len(edge["log_format"]) == 2
    for directive, found in edge.items():
        assert statements(TEMPLATE, directive) == found
    listens = statements(TEMPLATE, "listen")
    assert len(listens) == 2
    assert all(x.rstrip(";").split()[2:4] == ["ssl", "http2"] for x in listens)


def test_the_ceiling_answers_a_cached_gets_body_and_headers_logged_or_not(tmp_path):
    body = '{"message":"bench hot message"}\n'
    answer = Answer(body, '"' + "ab" * 32 + '"', "public, max-age=31536000, immutable")
    ceiling = start_ceiling(tmp_path, answer)
    try:
        log_target, nolog_target = ceiling.targets()
        for target in (log_target, nolog_target):
            r = requests.get(target.url(EDGE) + "/messages/" + "a" * 64, verify=CERT, timeout=5)
            assert r.status_code == 200 and r.text == body
            assert r.headers["Content-Type"] == "application/json"
            assert r.headers["ETag"] == answer.etag
            assert r.headers["Cache-Control"] == answer.cache_control
            assert r.headers["Strict-Transport-Security"] and r.headers["X-Request-ID"]
        assert target.cpu_seconds() and target.rss_mib()["nginx"] > 0
    finally:
        ceiling.stop()  # flushes the logs' buffers
    (line,) = (tmp_path / "access.log").read_text().splitlines()  # the first server's only
    assert json.loads(line)["route"] == "/messages/<digest>"
    assert (tmp_path / "edge-metrics.log").read_text().split()[:3] == [
        "/messages/<digest>",
        "GET",
        "200",
    ]


def test_processes_of_make_run_are_sorted_by_their_programs_name():
    assert kind_from("s6-supervise", ["s6-supervise", "nginx"]) == "supervisor"
    assert kind_from("python", ["python", "-m", "native.run"]) == "supervisor"
    assert kind_from("run", ["/bin/sh", "./run", "nginx/log"]) == "log writers"
    assert kind_from("sed", ["sed", "-u", "s/^/nginx: /"]) == "log writers"
    assert kind_from("python", ["/x/python", "-m", "service.serve", "--chdir", "/x"]) == "app"
    assert kind_from("nginx", ["nginx: worker process"]) == "nginx"
    assert kind_from("prometheus-nginx-exporter", ["prometheus-nginx-exporter"]) == "monitoring"
    assert kind_from("mtail", ["mtail", "--progs", "monitoring/mtail"]) == "mtail"
    assert kind_from("redis-server", ["redis-server 127.0.0.1:1"]) == "redis"
    assert kind_from("prometheus-redis-exporter", ["-redis.addr"]) == "monitoring"


def bench(out: Path, options: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`make bench`'s program with the options, its results in `out`: what it printed, and
    its results file (JSON). It exits non-zero for an invalid run."""
    argv = [sys.executable, "-m", "bench", *options.split(), "--out", str(out)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr  # non-zero: an invalid run
    (results,) = out.glob("bench-*.json")
    return run, results


def assert_compared(document: dict) -> None:
    """Each scenario measured for both apps, their ratio stated; every run valid."""
    for row in document["comparison"]:
        assert row["ours_rps"] > 0 and row["reference_rps"] > 0
        assert row["throughput_ratio"] == round(row["ours_rps"] / row["reference_rps"], 3)
    assert all(run["valid"] for run in document["runs"])


def assert_peer_compared(document: dict) -> None:
    """The instrumented peer measured in each scenario, with every signal on: each request
    counted by its metrics, logged as a JSON line, and traced (its server span and the span
    of its one Redis command: the SDK's default sampler keeps every trace)."""
    assert document["peer_server"] == "sync 5"  # --no-sweep
    for row in document["comparison"]:
        assert row["peer_rps"] > 0
        assert row["ratio_to_peer"] == round(row["ours_rps"] / row["peer_rps"], 3)
    signals = document["peer_signals"]
    assert signals["requests"] > 0
    # and a few more: the reads that checked the stored messages before the runs
    assert signals["requests"] <= signals["requests_counted_by_metrics"] < signals["requests"] + 50
    assert signals["json_access_lines"] == signals["requests_counted_by_metrics"]
    assert signals["spans"] == 2 * signals["requests_counted_by_metrics"]


def assert_targets_reported(document: dict) -> None:
    """Every target stated beside what was measured, whether met or not."""
    rows = document["targets"]
    assert {(r["scenario"], r["measure"]) for r in rows} == {
        *((s, f"throughput, ours / {o}") for s in APP for o in ("reference", "peer")),
        ("hot", "throughput, ours / reference"),
        ("hot", "throughput, ours / ceiling-nolog"),
        *((s, f"p99, ours / {o}") for s in (*APP, "hot") for o in ("reference", "peer")),
    }
    for r in rows:
        assert r["ratio"] == round(r["ours"] / r["theirs"], 3)
        bound = float(r["bound"].split()[1])
        met = r["ratio"] >= bound if r["bound"].startswith(">=") else r["ratio"] <= bound
        assert r["met"] == ("yes" if met else "NO"), r


APP = ("post", "cold", "miss", "miss1")


def test_a_short_shipped_run_measures_make_run_the_reference_the_peer_and_the_ceiling(tmp_path):
    short = "--no-sweep --seconds 1 --warmup 0 --reps 1 --connections 4 --cold-rate 10000"
    out, results = bench(tmp_path, short)
    document = json.loads(results.read_text())
    assert document["mode"] == "shipped" and document["ours_server"].startswith("make run (")
    scenarios = {row["scenario"] for row in document["comparison"]}
    assert scenarios == {"post", "hot", "cold", "miss", "miss1"}
    assert_compared(document)
    ceilings = [row["ceiling"] for row in document["ceiling"]]
    assert ceilings == ["nginx, the edge's access logs", "nginx, no log"]
    assert all(row["ours_per_ceiling"] > 0 for row in document["ceiling"])
    assert document["cold_messages_stored"] == 10_000  # one cold run's slice: 1 s at 10,000/s
    for row in document["cpu_ours"]:
        assert {
            "supervisor_cpu_us",
            "log_writers_cpu_us",
            "mtail_cpu_us",
            "monitoring_cpu_us",
        } <= set(row)
        assert row["nginx_cpu_us"] > 0
        if row["scenario"] != "hot":  # hot: answered from the edge's cache
            assert row["app_cpu_us"] > 0 and row["redis_cpu_us"] > 0
    columns = {"scenario", "rps", "app_cpu_us", "nginx_cpu_us", "redis_cpu_us", "total_cpu_us"}
    assert all(set(row) == columns for row in document["cpu_reference"])
    assert all(set(row) == columns for row in document["cpu_peer"])
    assert_peer_compared(document)
    assert_targets_reported(document)
    totals = document["trace_totals"]  # traced as shipped (the default sampler)
    assert 0 < totals["server_spans"] < totals["requests"], totals
    traces = {row["scenario"]: row for row in document["traces"]}
    assert traces["post"]["traced_rps"] > 0 and traces["miss"]["traced_rps"] > 0
    assert traces["hot"]["traced_rps"] < traces["miss"]["traced_rps"]  # hot: from the cache
    # A traced request: its server span and one span per Redis command (a GET: GET; a POST:
    # SET, then the PING that checks Redis could persist it).
    assert totals["server_spans"] < totals["spans"] <= 3 * totals["server_spans"], totals
    assert "throughput_ratio" in out.stdout and "ours_per_ceiling" in out.stdout


def test_a_short_harness_run_measures_every_scenario_for_both_apps(tmp_path):
    short = "--mode harness --no-sweep --no-scaling --seconds 1 --warmup 0 --reps 1 --connections 4"
    out, results = bench(tmp_path, short)
    document = json.loads(results.read_text())
    pairs = {(row["via"], row["scenario"]) for row in document["comparison"]}
    assert pairs == {(v, s) for v in ("edge", "direct") for s in ("post", "hit", "miss")}
    assert_compared(document)
    assert document["spans_exported_in_comparison"] > 0  # ours ran with tracing on
    assert any(r["scenario"] == "plain" for r in document["medians"])  # nginx's ceiling
    assert results.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert "throughput_ratio" in out.stdout


def test_the_profiler_names_where_a_worker_spends_its_time(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.profile", "--seconds", "4", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Flask and Werkzeug" in out.stdout and "redis client" in out.stdout
    assert (tmp_path / "profile-post.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.stack
def test_a_short_overload_run_reports_both_edges(monkeypatch, capsys):
    from bench import overload

    monkeypatch.setenv("BENCH_OVERLOAD_CONNECTIONS", "128")
    monkeypatch.setenv("BENCH_OVERLOAD_SECONDS", "3")
    monkeypatch.setenv("BENCH_OVERLOAD_ROUNDS", "1")
    assert overload.main() == 0
    out = capsys.readouterr().out
    rows = {
        tuple(cells[:3]): [float(x) for x in cells[3:]]
        for line in out.splitlines()
        if line.startswith("| at-once") or line.startswith("| retry-after")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {
        (clients, "128", edge)
        for clients in ("at-once", "retry-after")
        for edge in ("shipped", "no shedding")
    }
    # 128 connections, 32 let through: the shipped edge sheds, the other never does.
    assert rows[("at-once", "128", "shipped")][1] > 0
    assert rows[("at-once", "128", "no shedding")][1] == 0
    # Clients that wait a 503's Retry-After (1 s) before sending again: each connection is
    # shed at most about once a second (a thread's waits may go to another connection of it).
    assert rows[("retry-after", "128", "shipped")][1] <= 2 * 128
    assert "workers killed for a timeout" in out
