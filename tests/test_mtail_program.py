"""The edge metrics program (monitoring/mtail/edge.mtail), run by the real mtail over lines
in the form nginx writes them."""

from __future__ import annotations

import time

import pytest
import requests
from mirakuru import HTTPExecutor, SimpleExecutor

from native.ports import free_port
from native.settings import ROOT
from tests.helpers import eventually, mtail_one_shot
from tests.metrics_text import value

OLD_LINES = [  # written before nginx logged the cache status
    "/messages POST 201 0.003 0.002",
    "/messages POST 201 0.000 0.000",  # faster than nginx's clock
    "/messages POST 201 12.500 12.499",  # over the top bucket
    "/messages POST 201 0.020 0.010, 0.009",  # retried upstream
    "/messages/<digest> GET 502 0.001 -",  # no upstream answer
    "other OTHER 405 0.000 -",
]
CACHE_LINES = [  # the cache status last: "-" where nginx looked nothing up
    "/messages POST 201 0.003 0.002 -",
    "/messages/<digest> GET 200 0.002 0.002 MISS",
    "/messages/<digest> GET 200 0.000 - HIT",  # the app never saw it
    "/messages/<digest> HEAD 200 0.000 - HIT",
    "/messages/<digest> GET 304 0.000 - HIT",
    "/messages/<digest> GET 404 0.001 0.001 MISS",  # looked up, never stored
    "/messages/<digest> GET 200 0.020 0.010, 0.009 MISS",  # retried upstream
    "/messages/<digest> GET 502 0.001 -, - MISS",  # no upstream answered either try
    "/messages/<digest> GET 200 0.004 -, 0.003 MISS",  # the second try answered
    "/messages/<digest> GET 200 0.510 0.001 : 0.002 EXPIRED",  # after an internal redirect
    "other OTHER 405 0.000 - -",
]
LINES = [*OLD_LINES, *CACHE_LINES, "something that is not an edge line"]


def run_mtail(tmp_path) -> str:
    log = tmp_path / "edge.log"
    log.write_text("\n".join(LINES) + "\n")
    return mtail_one_shot(log)


def test_requests_are_counted_by_route_method_and_status(tmp_path):
    text = run_mtail(tmp_path)
    count = "edge_http_requests_total"
    assert value(text, count, route="/messages", method="POST", status="201") == 5
    assert value(text, count, route="/messages/<digest>", method="GET", status="502") == 2
    assert value(text, count, route="other", method="OTHER", status="405") == 2
    # Answers from the cache count like any other: the SLOs count every request at the edge.
    assert value(text, count, route="/messages/<digest>", method="GET", status="200") == 5
    assert value(text, count, route="/messages/<digest>", method="HEAD", status="200") == 1
    assert value(text, count) == len(OLD_LINES) + len(CACHE_LINES)


def test_every_duration_lands_in_a_bucket(tmp_path):
    text = run_mtail(tmp_path)
    name = "edge_http_request_duration_seconds"
    labels = {"route": "/messages", "status": "201"}
    assert value(text, f"{name}_count", **labels) == 5
    assert value(text, f"{name}_bucket", le="+Inf", **labels) == 5
    assert value(text, f"{name}_bucket", le="0.0005", **labels) == 1  # the 0.000 one
    assert value(text, f"{name}_bucket", le="10", **labels) == 4


def test_upstream_time_only_when_an_upstream_answered(tmp_path):
    text = run_mtail(tmp_path)
    name = "edge_upstream_response_duration_seconds_count"
    assert value(text, name, route="/messages", status="201") == 5
    # The misses the app answered; neither the cache's answers nor the 502s.
    assert value(text, name, route="/messages/<digest>", status="200") == 4
    assert value(text, name, route="/messages/<digest>", status="404") == 1
    assert value(text, name, route="/messages/<digest>", status="502") == 0


def test_upstream_time_adds_up_every_attempt_the_client_waited_for(tmp_path):
    """The latency SLI's measure: a retried request took both attempts' time (0.010 + 0.009),
    and no client transfer (the 0.510 s request after a redirect took the server 0.003 s)."""
    text = run_mtail(tmp_path)
    name = "edge_upstream_response_duration_seconds"
    posts = {"route": "/messages", "status": "201"}
    # 0.002, 0.000, 12.499, 0.019 (retried), 0.002
    assert value(text, f"{name}_sum", **posts) == pytest.approx(12.522)
    assert value(text, f"{name}_bucket", le="0.01", **posts) == 3
    gets = {"route": "/messages/<digest>", "status": "200"}
    # 0.002, 0.019 (retried), 0.003 (redirected), 0.003 (second try)
    assert value(text, f"{name}_sum", **gets) == pytest.approx(0.027)
    assert value(text, f"{name}_bucket", le="0.1", **gets) == 4


def test_requests_are_counted_by_cache_status(tmp_path):
    text = run_mtail(tmp_path)
    name = "edge_cache_requests_total"
    digest = "/messages/<digest>"
    assert value(text, name, route=digest, cache="HIT") == 3
    assert value(text, name, route=digest, cache="MISS") == 5
    assert value(text, name, route=digest, cache="EXPIRED") == 1
    assert value(text, name, route="/messages", cache="none") == 1
    assert value(text, name, route="other", cache="none") == 1
    # Every line that has the field, once; the older lines have none to count.
    assert value(text, name) == len(CACHE_LINES)


@pytest.mark.stack  # mtail running, tailing the log
def test_the_trimmed_log_keeps_being_counted(tmp_path):
    """monitoring/edge-log/trim.sh empties the log past its size limit; the real mtail, tailing
    it, counts the lines written before and after, and a log under the limit is left alone."""
    log = tmp_path / "edge.log"
    log.write_text("")
    port = free_port()
    progs = ["--progs", str(ROOT / "monitoring" / "mtail"), "--emit_prog_label=false"]
    argv = ["mtail", *progs, "--logs", str(log), "--address", "127.0.0.1", "--port", str(port)]
    mtail = HTTPExecutor(argv, url=f"http://127.0.0.1:{port}/metrics", method="GET", timeout=30)
    trim_sh = ROOT / "monitoring" / "edge-log" / "trim.sh"
    trim = SimpleExecutor(["sh", str(trim_sh), str(log), "1000", "0.2"], timeout=10)
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
