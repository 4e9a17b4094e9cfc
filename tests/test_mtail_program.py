"""The edge metrics program (monitoring/mtail/edge.mtail), run by the real mtail over lines
in the form nginx writes them."""

from __future__ import annotations

import subprocess
import time

import requests
from mirakuru import HTTPExecutor, SimpleExecutor

from native.harness import free_port
from native.stack import ROOT
from tests.conftest import eventually
from tests.metrics_text import value

LINES = [
    "/messages POST 201 0.003 0.002",
    "/messages POST 201 0.000 0.000",  # faster than nginx's clock
    "/messages POST 201 12.500 12.499",  # over the top bucket
    "/messages POST 201 0.020 0.010, 0.009",  # retried upstream
    "/messages/<digest> GET 502 0.001 -",  # no upstream answer
    "other OTHER 405 0.000 -",
    "something that is not an edge line",
]


def run_mtail(tmp_path) -> str:
    log = tmp_path / "edge.log"
    log.write_text("\n".join(LINES) + "\n")
    out = subprocess.run(
        ["mtail", "--progs", str(ROOT / "monitoring" / "mtail"), "--logs", str(log),
         "--one_shot", "--one_shot_format", "prometheus", "--emit_prog_label=false",
         "--address", "127.0.0.1", "--port", "0"],  # it opens its HTTP port even here
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


def test_requests_are_counted_by_route_method_and_status(tmp_path):
    text = run_mtail(tmp_path)
    count = "edge_http_requests_total"
    assert value(text, count, route="/messages", method="POST", status="201") == 4
    assert value(text, count, route="/messages/<digest>", method="GET", status="502") == 1
    assert value(text, count, route="other", method="OTHER", status="405") == 1
    assert value(text, count) == 6


def test_every_duration_lands_in_a_bucket(tmp_path):
    text = run_mtail(tmp_path)
    name = "edge_http_request_duration_seconds"
    labels = {"route": "/messages", "status": "201"}
    assert value(text, f"{name}_count", **labels) == 4
    assert value(text, f"{name}_bucket", le="+Inf", **labels) == 4
    assert value(text, f"{name}_bucket", le="0.0005", **labels) == 1  # the 0.000 one
    assert value(text, f"{name}_bucket", le="10", **labels) == 3


def test_upstream_time_only_when_an_upstream_answered(tmp_path):
    text = run_mtail(tmp_path)
    name = "edge_upstream_response_duration_seconds_count"
    assert value(text, name, route="/messages") == 4
    assert value(text, name, route="/messages/<digest>") == 0


def test_the_trimmed_log_keeps_being_counted(tmp_path):
    """monitoring/edge-log/trim.sh empties the log past its size limit; the real mtail, tailing
    it, counts the lines written before and after, and a log under the limit is left alone."""
    log = tmp_path / "edge.log"
    log.write_text("")
    port = free_port()
    mtail = HTTPExecutor(
        ["mtail", "--progs", str(ROOT / "monitoring" / "mtail"), "--logs", str(log),
         "--emit_prog_label=false", "--address", "127.0.0.1", "--port", str(port)],
        url=f"http://127.0.0.1:{port}/metrics", method="GET", timeout=30,
    )  # fmt: skip
    trim = SimpleExecutor(["sh", str(ROOT / "monitoring" / "edge-log" / "trim.sh"), str(log),
                           "1000", "0.2"], timeout=10)  # fmt: skip
    count = "edge_http_requests_total"

    def counted() -> float:
        return value(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text, count)

    def append(n: int) -> None:
        with log.open("a") as f:
            f.writelines(f"{LINES[0]}\n" for _ in range(n))

    with mtail:
        append(50)  # 1,550 bytes: past the limit
        eventually(lambda: counted() == 50, 10)  # read (what is not yet read may be lost)
        with trim:
            eventually(lambda: log.stat().st_size == 0, 10)
            append(5)  # 155 bytes: under the limit, left alone
            eventually(lambda: counted() == 55, 10)
            time.sleep(0.6)
            assert log.stat().st_size == 155
