"""`make bench-rules` (python -m bench.rule_eval): what the rules cost Prometheus to evaluate,
the last commit's (git show HEAD:...) against the working tree's, on 30 days of edge metrics.

1. Synthetic edge metrics, shaped like production (the routes, methods and statuses nginx
   maps, mtail's histograms with its buckets; a few hundred requests a second with a daily
   swing, some 5xx, now and then a bad hour of errors or of slow answers), one sample every
   15 s for the last BENCH_RULES_DAYS days, backfilled with `promtool tsdb create-blocks-from
   openmetrics`. The 5-minute recordings that rules read over long ranges (*_over_time) are
   backfilled too (`create-blocks-from rules`), as 30 days of evaluation would have left them.
   Cached under BENCH_CACHE_DIR, keyed by the generator's parameters; a later run generates
   only the samples from the cache's end to now.
2. Two Prometheus servers on copies of that data, no scrape targets, evaluation every 15 s,
   one with each set of rule files, side by side for BENCH_RULES_MINUTES (the shared machine
   is noisy: only ratios within one run mean something).
3. From each server's own /metrics: every group's duration at each of its evaluations, and
   the process's CPU; then the 1, 3 and 30-day SLO ratios of both, and the exact ratio.

The data ends when the servers start and nothing is scraped: the 5-minute windows empty
5 minutes later, so runs longer than about 4 minutes measure the short windows on no data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import requests
import yaml
from mirakuru import HTTPExecutor
from prometheus_client.parser import text_string_to_metric_families

from native.ports import free_port
from native.settings import ROOT

RULES = Path("monitoring/prometheus/rules")
RULE_FILES = ("recording.yml", "alerts.yml")
STEP = 15  # seconds between samples, as Prometheus scrapes mtail
EVALUATION_INTERVAL = 15  # prometheus.yml's
HOUR = 3600 // STEP  # steps an hour: the unit of the generator's randomness
# Blocks of 54 h: the largest Prometheus compacts to at this retention (a tenth of it, on its
# 2h x 3^n ladder), so the servers find the blocks production has and compact none while timed.
BLOCK = 54 * HOUR
BLOCK_DURATION = "54h"
RETENTION = "60d"  # every backfilled block inside it, or the server deletes it at start
ULID = re.compile(r"[0-9A-Z]{26}")  # a block's folder (not one being written or deleted)
FORMAT_VERSION = 1  # part of the cache key: bump when the generator's output changes

# mtail's buckets (monitoring/mtail/edge.mtail, its first boundary not exported); it never
# counts in +Inf, so +Inf equals the 1-day bucket.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 86400)

# (route, method, status): share of the API's requests that were not 5xx (made up to 1)
API_SHARES = {
    ("/messages", "POST", "201"): 0.28,
    ("/messages", "POST", "400"): 0.01,
    ("/messages", "POST", "413"): 0.002,
    ("/messages", "POST", "415"): 0.003,
    ("/messages", "POST", "429"): 0.005,
    ("/messages/<digest>", "GET", "200"): 0.50,
    ("/messages/<digest>", "GET", "304"): 0.06,
    ("/messages/<digest>", "GET", "404"): 0.12,
    ("/messages/<digest>", "HEAD", "200"): 0.015,
    ("/messages/<digest>", "HEAD", "404"): 0.005,
}
API_5XX = {("/messages", "POST", "503"): 0.3, ("/messages/<digest>", "GET", "503"): 0.7}
OTHER_RATES = {("/healthz", "GET", "200"): 1.0, ("other", "GET", "404"): 0.3}  # req/s, flat
# (route, status): median seconds of the whole request (lognormal, with its sigma)
LATENCY = {
    ("/messages", "201"): (0.008, 0.8),
    ("/messages", "400"): (0.002, 0.6),
    ("/messages", "413"): (0.001, 0.5),
    ("/messages", "415"): (0.002, 0.6),
    ("/messages", "429"): (0.0003, 0.5),
    ("/messages", "503"): (0.25, 1.0),
    ("/messages/<digest>", "200"): (0.001, 1.5),  # mostly the edge's cache
    ("/messages/<digest>", "304"): (0.0003, 0.5),
    ("/messages/<digest>", "404"): (0.004, 0.7),
    ("/messages/<digest>", "503"): (0.25, 1.0),
    ("/healthz", "200"): (0.002, 0.5),
    ("other", "404"): (0.0003, 0.5),
}
# (route, status): share of those requests the app answered, and the app's median seconds
UPSTREAM = {
    ("/messages", "201"): (1.0, 0.007),
    ("/messages", "400"): (1.0, 0.0015),
    ("/messages", "415"): (1.0, 0.0015),
    ("/messages", "503"): (1.0, 0.2),
    ("/messages/<digest>", "200"): (0.3, 0.005),  # the cache's misses
    ("/messages/<digest>", "404"): (1.0, 0.0035),
    ("/messages/<digest>", "503"): (1.0, 0.2),
    ("/healthz", "200"): (1.0, 0.0015),
}
SLOW_FACTOR = 4  # a slow hour multiplies every median by this


@dataclass(frozen=True)
class Settings:
    """The benchmark's settings, from the environment (make bench-rules VAR=...)."""

    days: float = 30  # BENCH_RULES_DAYS: the data's span (the longest SLO window is 30 d)
    minutes: float = 3.5  # BENCH_RULES_MINUTES: how long both servers run side by side
    rate: float = 300  # BENCH_RULES_RATE: the API's mean requests per second
    seed: int = 23  # BENCH_RULES_SEED
    base: str = "HEAD"  # BENCH_RULES_BASE: the revision whose rules are "old"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "message-service")
    tolerance: float = 0.02  # BENCH_RULES_TOLERANCE: relative, old and new SLO ratios

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Settings from BENCH_RULES_* and BENCH_CACHE_DIR, defaults for the rest."""
        env = dict(os.environ if env is None else env)
        d = cls()
        return cls(
            days=float(env.get("BENCH_RULES_DAYS", d.days)),
            minutes=float(env.get("BENCH_RULES_MINUTES", d.minutes)),
            rate=float(env.get("BENCH_RULES_RATE", d.rate)),
            seed=int(env.get("BENCH_RULES_SEED", d.seed)),
            base=env.get("BENCH_RULES_BASE", d.base),
            cache_dir=Path(env.get("BENCH_CACHE_DIR", d.cache_dir)).expanduser(),
            tolerance=float(env.get("BENCH_RULES_TOLERANCE", d.tolerance)),
        )


# --- the synthetic metrics ---------------------------------------------------------------


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _bucket_probabilities(median: float, sigma: float) -> np.ndarray:
    """P(value in each of mtail's intervals: <= 0.0005, (0.0005, 0.001], ..., above 1 day)."""
    cdf = [0.5 * (1 + math.erf(math.log(b / median) / (sigma * math.sqrt(2)))) for b in BUCKETS]
    p = np.diff([0.0, *cdf, 1.0])
    return cast("np.ndarray", np.clip(p, 0, None) / np.clip(p, 0, None).sum())


# A typical value per interval, for the histograms' _sum.
_MIDPOINTS = np.array([0.0002, *np.sqrt(np.array(BUCKETS[:-1]) * np.array(BUCKETS[1:])), 86400])


class Traffic:
    """The synthetic edge: every series' increments, drawn an hour at a time from a random
    generator seeded by (seed, hour), so any span of steps comes out the same however it is
    cut into files."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.seed = seed
        requests_keys = [*API_SHARES, *API_5XX, *OTHER_RATES]
        self.series: list[str] = [
            "edge_http_requests_total" + _labels(route=r, method=m, status=s)
            for r, m, s in requests_keys
        ]
        for name, combos in (
            ("edge_http_request_duration_seconds", LATENCY),
            ("edge_upstream_response_duration_seconds", UPSTREAM),
        ):
            for route, status in combos:
                for le in [*(f"{b:g}" for b in BUCKETS), "+Inf"]:
                    self.series.append(
                        f"{name}_bucket" + _labels(route=route, status=status, le=le)
                    )
                self.series.append(f"{name}_count" + _labels(route=route, status=status))
                self.series.append(f"{name}_sum" + _labels(route=route, status=status))
        shares = np.array(list(API_SHARES.values()))
        self._shares = shares / shares.sum()

    def hour(self, index: int) -> np.ndarray:
        """Increments of every series (rows, in self.series' order) for the HOUR steps of
        hour `index` since the epoch."""
        rng = np.random.default_rng([self.seed, index])
        t = (index * HOUR + np.arange(HOUR)) * STEP
        # Busier by day than by night (UTC), +-50% around the mean.
        rate = self.rate * (1 + 0.5 * np.sin(2 * np.pi * (t / 86400 - 0.3)))
        bad_hour = rng.random() < 1 / 72  # about every 3 days: 3% of requests fail
        slow_hour = rng.random() < 1 / 48  # about every 2 days: the app is 4x slower
        error_ratio = 0.03 if bad_hour else 0.0003
        api = rng.poisson(rate * STEP)
        errors = rng.binomial(api, error_ratio)
        counts: dict[tuple[str, str, str], np.ndarray] = dict(
            zip(API_SHARES, rng.multinomial(api - errors, self._shares).T, strict=True)
        )
        post_errors = rng.binomial(errors, next(iter(API_5XX.values())))
        get_errors = errors - post_errors
        counts.update(zip(API_5XX, (post_errors, get_errors), strict=True))
        key: tuple[str, str, str] | tuple[str, str]  # (route, method, status), then (route, status)
        for key, per_second in OTHER_RATES.items():
            counts[key] = rng.poisson(per_second * STEP, HOUR)
        rows = [counts[k] for k in [*API_SHARES, *API_5XX, *OTHER_RATES]]
        by_route_status: dict[tuple[str, str], np.ndarray] = {}
        for (route, _, status), n in counts.items():
            by_route_status[(route, status)] = by_route_status.get((route, status), 0) + n
        slow = SLOW_FACTOR if slow_hour else 1
        for combos in (LATENCY, UPSTREAM):
            for key, value in combos.items():
                n = by_route_status[key]
                if combos is UPSTREAM:
                    share, median = value
                    n = rng.binomial(n, share)
                    sigma = LATENCY[key][1]
                else:
                    median, sigma = value
                per_interval = rng.multinomial(n, _bucket_probabilities(median * slow, sigma))
                cumulative = per_interval.cumsum(axis=1)
                rows.extend(cumulative[:, :-1].T)  # le=0.0005 ... le=86400
                rows.append(cumulative[:, -1])  # +Inf
                rows.append(n)  # _count
                rows.append(per_interval @ _MIDPOINTS * slow)  # _sum
        return np.array(rows, dtype=np.float64)

    def increments(self, first: int, last: int) -> np.ndarray:
        """Increments of every series for steps first..last (inclusive, since the epoch)."""
        hours = [self.hour(h) for h in range(first // HOUR, last // HOUR + 1)]
        joined = np.concatenate(hours, axis=1)
        offset = first - (first // HOUR) * HOUR
        return joined[:, offset : offset + last - first + 1]


def write_openmetrics(
    path: Path, traffic: Traffic, first: int, last: int, start: list[float]
) -> list[float]:
    """Steps first..last of every series as OpenMetrics (the counters continuing from
    `start`); returns the counters' values at the last step."""
    values = traffic.increments(first, last).cumsum(axis=1) + np.array(start)[:, None]
    stamps = [str(s * STEP) for s in range(first, last + 1)]
    families: dict[str, list[str]] = {}
    for name in traffic.series:
        family = re.sub(r"(_total|_bucket|_count|_sum)$", "", name.split("{")[0])
        families.setdefault(family, []).append(name)
    index = {name: i for i, name in enumerate(traffic.series)}
    with path.open("w") as f:
        for family, names in families.items():
            kind = "counter" if names[0].split("{")[0].endswith("_total") else "histogram"
            f.write(f"# TYPE {family} {kind}\n")
            for name in names:
                row = values[index[name]]
                numbers = [f"{v:.6f}" for v in row] if "_sum{" in name else map(int, row)
                f.write("".join(f"{name} {v} {t}\n" for v, t in zip(numbers, stamps, strict=True)))
        f.write("# EOF\n")
    return cast("list[float]", values[:, -1].tolist())


# --- the TSDB, cached ---------------------------------------------------------------------


def over_time_recordings(rule_texts: list[str]) -> list[dict[str, str]]:
    """The recording rules whose series other rules read over a range (*_over_time(x[...])):
    to be backfilled, as long evaluation would have left them."""
    rules = [
        rule
        for text in rule_texts
        for group in (yaml.safe_load(text) or {}).get("groups", [])
        for rule in group.get("rules", [])
    ]
    read = {
        name
        for rule in rules
        for name in re.findall(r"_over_time\(\s*([a-zA-Z_:][\w:]*)\s*\[", rule["expr"])
    }
    found: dict[str, dict[str, str]] = {}
    for rule in rules:
        if rule.get("record") in read:
            found.setdefault(rule["record"], {"record": rule["record"], "expr": rule["expr"]})
    return list(found.values())


def block_ranges(data: Path) -> list[tuple[int, int]]:
    """(minTime, maxTime) of every block in a TSDB folder."""
    return sorted(
        (meta["minTime"], meta["maxTime"])
        for meta in (
            json.loads(p.read_text())
            for p in data.glob("*/meta.json")
            if ULID.fullmatch(p.parent.name)
        )
    )


def overlapping(ranges: list[tuple[int, int]]) -> bool:
    """Whether any two blocks overlap in time (Prometheus then compacts them)."""
    return any(b[0] < a[1] for a, b in itertools.pairwise(ranges))


class Prometheus:
    """A Prometheus server on a data folder, with rule files and no scrape targets."""

    def __init__(self, name: str, folder: Path, data: Path, rule_files: list[Path]) -> None:
        self.name = name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        config = folder / f"{name}.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"evaluation_interval": f"{EVALUATION_INTERVAL}s"},
                    "rule_files": [str(p) for p in rule_files],
                }
            )
        )
        argv = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={self.address}",
            "--web.enable-lifecycle",
        ]
        self.log = folder / f"{name}.log"
        self.executor = HTTPExecutor(
            argv,
            url=f"http://{self.address}/-/ready",
            method="GET",
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            timeout=300,  # loading a month of blocks
            stop_signal=signal.SIGTERM,
        )

    def start(self) -> Prometheus:
        self.executor.start()
        return self

    def stop(self) -> None:
        self.executor.stop()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Its own /metrics: (name, sorted labels) -> value."""
        text = requests.get(f"http://{self.address}/metrics", timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def rule_times(self, min_ms: float) -> list[tuple[str, str, float]]:
        """(group, record or alert, ms) of each rule's last evaluation, in groups whose last
        evaluation took at least min_ms: where an expensive group's time goes."""
        groups = requests.get(f"http://{self.address}/api/v1/rules", timeout=10).json()
        return [
            (g["name"], r.get("name", ""), r["evaluationTime"] * 1000)
            for g in groups["data"]["groups"]
            if g["evaluationTime"] * 1000 >= min_ms
            for r in g["rules"]
        ]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (a vector)."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        answer = requests.get(f"http://{self.address}/api/v1/query", params=params, timeout=120)
        body = answer.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{self.name}: {expr}: {body}")
        return cast("list[dict[str, Any]]", body["data"]["result"])


def run(argv: list[str]) -> None:
    """A promtool command; its output only when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stdout}{done.stderr}")


def add_samples(
    data: Path, scratch: Path, traffic: Traffic, first: int, last: int, start: list[float]
) -> list[float]:
    """Backfill steps first..last into `data`, a file per 54 h block, promtool reading one
    while the next is written (two cores)."""
    pending: subprocess.Popen[bytes] | None = None
    previous: Path | None = None
    values = start
    for block_first in range(first - first % BLOCK, last + 1, BLOCK):
        a, b = max(first, block_first), min(last, block_first + BLOCK - 1)
        path = scratch / f"{a}.om"
        values = write_openmetrics(path, traffic, a, b, values)
        if pending is not None and pending.wait():
            raise RuntimeError(f"promtool could not read {previous}")
        if previous is not None:
            previous.unlink()
        argv = ["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q"]
        pending = subprocess.Popen([*argv, f"--max-block-duration={BLOCK_DURATION}", path, data])
        previous = path
        print(f"  {(b - first + 1) * STEP / 86400:.1f} days of samples written", flush=True)
    if pending is not None and pending.wait():
        raise RuntimeError(f"promtool could not read {previous}")
    if previous is not None:
        previous.unlink()
    return values


def add_recordings(
    data: Path, scratch: Path, recordings: list[dict[str, str]], first: int, last: int
) -> None:
    """Backfill the recordings (every 15 s, as evaluated) over steps first..last, from a
    Prometheus on `data`; then let it merge the new blocks into the old (they overlap)."""
    if not recordings:
        return
    rules = scratch / "recordings.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "backfill", "rules": recordings}]}))
    out = scratch / "recorded"
    server = Prometheus("backfill", scratch, data, []).start()
    try:
        run(
            [
                *("promtool", "tsdb", "create-blocks-from", "rules", "-q"),
                f"--url=http://{server.address}",
                f"--start={first * STEP}",
                f"--end={last * STEP}",
                f"--eval-interval={EVALUATION_INTERVAL}s",
                f"--output-dir={out}",
                str(rules),
            ]
        )
    finally:
        server.stop()
    for block in out.iterdir():
        block.rename(data / block.name)
    # Prometheus merges overlapping blocks about a minute after it starts (then every
    # minute): here, once, rather than in the servers being timed.
    server = Prometheus("compact", scratch, data, []).start()
    try:
        deadline = time.monotonic() + 900
        while overlapping(block_ranges(data)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"blocks in {data} still overlap")
            time.sleep(5)
    finally:
        server.stop()


def prepared_tsdb(settings: Settings, recordings: list[dict[str, str]]) -> Path:
    """The data folder, in the cache: built, or brought up to now (its last sample about
    15 s ago)."""
    params = {
        "format": FORMAT_VERSION,
        "days": settings.days,
        "rate": settings.rate,
        "seed": settings.seed,
        "recordings": recordings,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    folder = settings.cache_dir / f"rule-eval-{key}"
    state_file = folder / "state.json"
    data = folder / "data"
    last = int(time.time()) // STEP - 1
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    # Too old: the window would reach blocks the retention drops.
    if state and (last - state["first"]) * STEP > (settings.days + 15) * 86400:
        state = None
    traffic = Traffic(settings.rate, settings.seed)
    if state is None:
        shutil.rmtree(folder, ignore_errors=True)
        data.mkdir(parents=True)
        first = last - int(settings.days * 86400) // STEP
        state = {"params": params, "first": first, "last": first - 1, "values": None}
        print(f"generating {settings.days:g} days of edge metrics in {folder}", flush=True)
    else:
        print(f"cached: {folder}, {(last - state['last']) * STEP} s to add", flush=True)
    if state["last"] < last:
        begin = state["last"] + 1
        start = state["values"] or [0.0] * len(traffic.series)
        # The state is written only once both parts are in: an interrupted run starts over.
        state_file.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="rule-eval-gen-", dir=folder) as scratch:
            state["values"] = add_samples(data, Path(scratch), traffic, begin, last, start)
            print(f"  backfilling {len(recordings)} recordings, then merging blocks", flush=True)
            add_recordings(data, Path(scratch), recordings, begin, last)
        state["last"] = last
        state_file.write_text(json.dumps(state))
    return data


def copy_blocks(data: Path, to: Path) -> Path:
    """A copy of the blocks alone (no lock, no WAL): a server of its own on each."""
    to.mkdir(parents=True)
    for block in data.iterdir():
        if ULID.fullmatch(block.name) and (block / "meta.json").exists():
            shutil.copytree(block, to / block.name)
    return to


# --- the measurement ----------------------------------------------------------------------


def rule_files_at(revision: str | None, folder: Path) -> list[Path]:
    """The rule files as committed at `revision` (None: the working tree), copied to folder."""
    folder.mkdir(parents=True)
    paths = []
    for name in RULE_FILES:
        path = folder / name
        if revision is None:
            shutil.copy(ROOT / RULES / name, path)
        else:
            show = ["git", "-C", str(ROOT), "show", f"{revision}:{RULES / name}"]
            path.write_text(subprocess.run(show, capture_output=True, text=True, check=True).stdout)
        paths.append(path)
    return paths


def group_intervals(paths: list[Path]) -> dict[str, float]:
    """'<file>;<group>' (as Prometheus labels groups) -> evaluation interval in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    found: dict[str, float] = {}
    for path in paths:
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            interval = group.get("interval", f"{EVALUATION_INTERVAL}s")
            found[f"{path};{group['name']}"] = int(interval[:-1]) * units[interval[-1]]
    return found


@dataclass
class Watch:
    """What one server's /metrics said about its rule groups over the run."""

    durations: dict[str, list[float]] = field(default_factory=dict)  # group -> each eval's
    last_seen: dict[str, float] = field(default_factory=dict)
    first: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def sample(self, metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
        """Record each group evaluation finished since the last sample."""
        stamps = {
            dict(labels)["rule_group"]: value
            for (name, labels), value in metrics.items()
            if name == "prometheus_rule_group_last_evaluation_timestamp_seconds"
        }
        for group, stamp in stamps.items():
            if stamp > 0 and stamp != self.last_seen.get(group):
                self.last_seen[group] = stamp
                duration = metrics[
                    ("prometheus_rule_group_last_duration_seconds", (("rule_group", group),))
                ]
                self.durations.setdefault(group, []).append(duration)
        if not self.first:
            self.first = metrics
        self.last = metrics

    def delta(self, name: str) -> float:
        """How much an unlabelled counter grew over the watch."""
        return self.last[(name, ())] - self.first[(name, ())]


def watch(servers: list[Prometheus], seconds: float) -> list[Watch]:
    """Each server's group evaluations, sampled every 2 s (a group evaluates at most every
    15 s, so none is missed) for `seconds`."""
    watches = [Watch() for _ in servers]
    deadline = time.monotonic() + seconds
    while True:
        for server, w in zip(servers, watches, strict=True):
            w.sample(server.metrics())
        if time.monotonic() >= deadline:
            return watches
        time.sleep(min(2, max(0.0, deadline - time.monotonic())))


def wait_for_evaluation(server: Prometheus, group_suffix: str, after: float) -> None:
    """Until every group named ...group_suffix evaluated after `after` (a Unix time)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        stamps = [
            value
            for (name, labels), value in server.metrics().items()
            if name == "prometheus_rule_group_last_evaluation_timestamp_seconds"
            and dict(labels)["rule_group"].endswith(group_suffix)
        ]
        if stamps and min(stamps) > after:
            return
        time.sleep(2)
    raise RuntimeError(f"{server.name}: no evaluation of {group_suffix} after {after}")


def group_table(
    watches: dict[str, Watch], intervals: dict[str, dict[str, float]]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per group (by file and name): ms per evaluation (mean), evaluations a minute (its
    interval), and seconds of evaluation an hour, old and new; and the totals."""
    rows = []
    names = sorted(
        {g.split("/")[-1] for side in intervals.values() for g in side},
        key=lambda g: (g.split(";")[0] != "recording.yml", g),
    )
    totals = {"old_s_per_hour": 0.0, "new_s_per_hour": 0.0}
    for short in names:
        row: dict[str, Any] = {"group": short}
        for side in ("old", "new"):
            full = next((g for g in intervals[side] if g.endswith("/" + short)), None)
            seen = watches[side].durations.get(full or "", [])
            if full is None or not seen:
                row.update({f"{side}_ms": None, f"{side}_per_min": 0, f"{side}_evals": len(seen)})
                row[f"{side}_s_per_hour"] = 0.0
                continue
            per_minute = 60 / intervals[side][full]
            mean = statistics.fmean(seen)
            row.update(
                {
                    f"{side}_ms": mean * 1000,
                    f"{side}_per_min": per_minute,
                    f"{side}_evals": len(seen),
                    f"{side}_s_per_hour": mean * per_minute * 60,
                }
            )
        totals["old_s_per_hour"] += row["old_s_per_hour"]
        totals["new_s_per_hour"] += row["new_s_per_hour"]
        rows.append(row)
    totals["ratio"] = totals["new_s_per_hour"] / totals["old_s_per_hour"]
    return rows, totals


SLO_WINDOWS = ("1d", "3d", "30d")
EXACT = {
    "availability": (
        '(sum(rate(edge_http_requests_total{{route=~"/messages.*",status=~"5.."}}[{w}])) '
        'or vector(0)) / sum(rate(edge_http_requests_total{{route=~"/messages.*"}}[{w}]))'
    ),
    "latency": (
        "1 - sum(rate(edge_upstream_response_duration_seconds_bucket"
        '{{route=~"/messages.*",status!~"5..",le="0.1"}}[{w}])) / '
        "sum(rate(edge_upstream_response_duration_seconds_count"
        '{{route=~"/messages.*",status!~"5.."}}[{w}]))'
    ),
}


def value(result: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(value, time) of a one-sample vector, None if empty."""
    if not result:
        return None
    stamp, text = result[0]["value"]
    return float(text), float(stamp)


def compare_ratios(old: Prometheus, new: Prometheus, tolerance: float) -> list[dict[str, Any]]:
    """The recorded 1, 3 and 30-day SLO ratios of both servers at the new one's last long
    evaluation, and the exact ratio (a rate over the whole window, queried then)."""
    rows: list[dict[str, Any]] = []
    for sli in ("availability", "latency"):
        for w in SLO_WINDOWS:
            name = f"slo:edge_{sli}:error_ratio_rate{w}"
            new_value = value(new.query(name))
            if new_value is None:
                rows.append({"series": name, "new": None, "old": None, "exact": None, "ok": False})
                continue
            at = new_value[1]
            old_value = value(old.query(name, at))
            exact = value(new.query(EXACT[sli].format(w=w), at))
            row: dict[str, Any] = {
                "series": name,
                "old": old_value and old_value[0],
                "new": new_value[0],
                "exact": exact and exact[0],
            }
            # The old latency ratio read another histogram (the whole request's time): only
            # the new one and the exact one measure the same thing.
            reference = row["exact"] if sli == "latency" else row["old"]
            row["relative_difference"] = (
                abs(row["new"] - reference) / reference if reference else None
            )
            row["ok"] = row["relative_difference"] is not None and (
                row["relative_difference"] <= tolerance
            )
            rows.append(row)
    return rows


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(
    rows: list[dict[str, Any]],
    totals: dict[str, float],
    cpu: dict[str, float],
    ratios: list[dict[str, Any]],
    minutes: float,
) -> str:
    """The report: the group table, the totals, process CPU, the SLO ratios."""
    lines = [
        "| group | old ms/eval | new ms/eval | evals/min old, new | old s/hour | new s/hour |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {fmt(r['old_ms'], '.2f')} ({r['old_evals']}) "
            f"| {fmt(r['new_ms'], '.2f')} ({r['new_evals']}) "
            f"| {r['old_per_min']:g}, {r['new_per_min']:g} "
            f"| {r['old_s_per_hour']:.2f} | {r['new_s_per_hour']:.2f} |"
        )
    lines.append(
        f"| **total** | | | | **{totals['old_s_per_hour']:.2f}** "
        f"| **{totals['new_s_per_hour']:.2f}** |"
    )
    lines += [
        "",
        "(ms/eval: the mean over the evaluations seen, their number in brackets; s/hour: "
        "seconds spent evaluating an hour, at each group's interval)",
        f"rule evaluation, new/old: **{totals['ratio']:.3f}** (from the groups' durations); "
        f"{cpu['rule_ratio']:.3f} from prometheus_rule_group_duration_seconds_sum",
        f"process CPU over {minutes:g} min: old {cpu['old']:.1f} s, new {cpu['new']:.1f} s, "
        f"new/old **{cpu['ratio']:.3f}**",
        "",
        "| series | old | new | exact (rate over the window) | relative difference | ok |",
        "|---|---|---|---|---|---|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['series']} | {fmt(r['old'], '.6f')} | {fmt(r['new'], '.6f')} "
            f"| {fmt(r['exact'], '.6f')} | {fmt(r.get('relative_difference'), '.4%')} "
            f"| {'yes' if r['ok'] else 'NO'} |"
        )
    lines.append(
        "(availability: new against old; latency: new against the exact ratio on the new "
        "histogram, since the old rules read another one)"
    )
    return "\n".join(lines)


def servers(folder: Path, data: Path, settings: Settings) -> Iterator[Prometheus]:
    """The old and the new server, each on its own copy of the data (not started)."""
    for side, revision in (("old", settings.base), ("new", None)):
        rules = rule_files_at(revision, folder / f"{side}-rules")
        yield Prometheus(side, folder, copy_blocks(data, folder / f"{side}-data"), rules)


def main() -> int:
    settings = Settings.from_env()
    print(f"settings: {asdict(settings)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as scratch:
        folder = Path(scratch)
        texts = [
            subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{settings.base}:{RULES / name}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for name in RULE_FILES
        ]
        texts += [(ROOT / RULES / name).read_text() for name in RULE_FILES]
        data = prepared_tsdb(settings, over_time_recordings(texts))
        old, new = servers(folder, data, settings)
        intervals = {
            side: group_intervals([p for p in (folder / f"{side}-rules").iterdir()])
            for side in ("old", "new")
        }
        # Prometheus names a group by the rule file's path as given: the same for both.
        started: list[Prometheus] = []
        try:
            for server in (old, new):
                started.append(server.start())
            ready = time.time()
            print(f"both servers up; measuring for {settings.minutes:g} minutes", flush=True)
            w_old, w_new = watch([old, new], settings.minutes * 60)
            wait_for_evaluation(new, ";slo-long-windows", ready)
            ratios = compare_ratios(old, new, settings.tolerance)
            expensive = {s.name: s.rule_times(min_ms=50) for s in (old, new)}
            compactions = {
                s.name: s.metrics().get(("prometheus_tsdb_compactions_total", ()), 0)
                for s in (old, new)
            }
        finally:
            for server in started:
                server.stop()
    rows, totals = group_table({"old": w_old, "new": w_new}, intervals)
    cpu_old = w_old.delta("process_cpu_seconds_total")
    cpu_new = w_new.delta("process_cpu_seconds_total")
    rule_sum = {
        side: w.delta("prometheus_rule_group_duration_seconds_sum")
        for side, w in (("old", w_old), ("new", w_new))
    }
    cpu = {
        "old": cpu_old,
        "new": cpu_new,
        "ratio": cpu_new / cpu_old,
        "rule_ratio": rule_sum["new"] / rule_sum["old"],
    }
    print()
    print(markdown(rows, totals, cpu, ratios, settings.minutes))
    print("\nthe rules of groups over 50 ms, their last evaluation:")
    for side, found in expensive.items():
        for group, rule, ms in found:
            print(f"  {side} {group} {rule}: {ms:.1f} ms")
    print(f"TSDB compactions while measured: {compactions}")
    return 0 if all(r["ok"] for r in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
