"""Overload at the edge: past EDGE_APP_MAX_CONNS requests at the app at once, nginx sheds
the rest at once, with the contract's JSON 503 and a Retry-After, never a 502 or a queue;
and the service is back to normal when the burst ends. (How much it sheds and how fast the
requests it serves stay is measured by the benchmark, docs/performance.md, not here.)"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from native.settings import StackConfig
from tests.harness import edge_session
from tests.make_run import MakeRun, make_run_env

BURST = 48  # clients at once, each with its own connection
MESSAGE = "x" * 256 * 1024  # a few milliseconds of the app's time each


def post(url: str) -> requests.Response:
    with edge_session() as session:
        body = {"message": f"{MESSAGE} {secrets.token_hex(8)}"}
        return session.post(f"{url}/messages", json=body, timeout=30)


# Two requests at the app at once, one worker: a burst of 48 cannot all be taken.
SMALL = {"EDGE_APP_MAX_CONNS": "2", "WEB_CONCURRENCY": "1"}


@pytest.mark.stack
def test_past_its_limit_the_edge_sheds_with_a_json_503_and_recovers(stack_factory):
    assert_shed_and_recovered(stack_factory(**SMALL).url)


@pytest.mark.stack
def test_make_run_sheds_the_same_way(tmp_path):
    run = MakeRun(state_dir=tmp_path / "state", env=make_run_env(tmp_path / "state", **SMALL))
    try:
        assert_shed_and_recovered(run.start().url)
    finally:
        run.kill()


def assert_shed_and_recovered(url: str) -> None:
    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(lambda _: post(url), range(BURST)))
    statuses = sorted({r.status_code for r in answers})
    shed = [r for r in answers if r.status_code == 503]
    assert statuses == [201, 503], statuses  # no 502, no 504: shed or served
    assert shed, "a burst past the limit is shed"
    for r in shed:
        assert r.json() == {"err_msg": "Too busy right now, try again shortly"}
        assert r.headers["Retry-After"] == "1"
        assert r.headers["Content-Type"] == "application/json"
    # Served ones carry no Retry-After; and once the burst is over, everything is served.
    assert all("Retry-After" not in r.headers for r in answers if r.status_code == 201)
    assert [post(url).status_code for _ in range(10)] == [201] * 10


@pytest.mark.stack
def test_a_failed_app_is_still_a_502_not_shedding(stack_factory):
    """Shedding is told from a failure: with the app gone nginx answers 502, as before."""
    stack = stack_factory()
    stack.executors["app"].stop()
    r = stack.request("GET", "/healthz")
    assert r.status_code == 502 and "Retry-After" not in r.headers
    assert r.json() == {"err_msg": "Service unavailable (bad gateway)"}


def test_the_limit_must_be_a_number_of_at_least_two():
    for bad in ("1", "0", "many"):
        with pytest.raises(SystemExit, match="EDGE_APP_MAX_CONNS"):
            StackConfig.from_env({"EDGE_APP_MAX_CONNS": bad})
