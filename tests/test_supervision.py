"""Faults on `make run` as shipped: each component is killed for real and its supervisor
repairs it while the rest keeps serving. Each test checks what clients got, that nothing
else was disturbed, and how long the repair took (printed, and bounded by the promises in
docs/operations.md). A frozen Redis and a crash loop reach Alertmanager."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
import requests

from native.edge_cache import SHARED_MEMORY, edge_cache_dir
from native.settings import StackConfig
from tests.dashboards import QUERIES, SUPERVISOR_METRICS, substitute
from tests.harness import CERT
from tests.make_run import MakeRun, make_run_env, until

pytestmark = pytest.mark.stack

# What each monitoring component answers on when it is up: its port's variable and a path.
MONITORING = {
    "mtail": ("MTAIL", "/metrics"),
    "nginx-exporter": ("NGINX_EXPORTER", "/metrics"),
    "redis-exporter": ("REDIS_EXPORTER", "/metrics"),
    "blackbox-exporter": ("BLACKBOX_EXPORTER", "/metrics"),
    "node-exporter": ("NODE_EXPORTER", "/metrics"),
    "process-exporter": ("PROCESS_EXPORTER", "/metrics"),
    "alertmanager": ("ALERTMANAGER", "/-/ready"),
    "prometheus": ("PROMETHEUS", "/-/ready"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[MakeRun]:
    """One `make run`, exactly as shipped but on free ports, for the whole module."""
    state = tmp_path_factory.mktemp("supervision") / "state"
    make_run = MakeRun(state_dir=state, env=make_run_env(state))
    make_run.start()
    yield make_run
    make_run.kill()


def post(run: MakeRun, message: str) -> tuple[int, dict | str]:
    """A POST through the edge: (status, JSON body), or (0, the error) if no answer."""
    try:
        r = requests.post(run.url + "/messages", json={"message": message}, verify=CERT, timeout=10)
    except requests.RequestException as exc:
        return 0, repr(exc)
    return r.status_code, r.json()


def outage(run: MakeRun, component: str) -> tuple[float, list]:
    """SIGKILL the component; POST until a new process of it is up and a 201 comes back.
    Returns the seconds that took and every answer that was not a 201."""
    victim = run.pid(component)
    answers = []
    psutil.Process(victim).kill()
    started = time.monotonic()
    while time.monotonic() - started < 30:
        status, body = post(run, f"during {component} outage {time.monotonic_ns()}")
        if status != 201:
            answers.append((status, body))
        elif run.status()[component][1] not in (None, victim):  # repaired, and serving
            break
        time.sleep(0.05)
    took = time.monotonic() - started
    print(
        f"\n{component} killed: a new one serves 201s after {took:.2f} s; other answers: "
        f"{sorted({s for s, _ in answers})} x{len(answers)}"
    )
    return took, answers


def test_as_shipped_nginx_reaches_the_app_over_its_socket_and_caches_found_messages(run):
    """make run's defaults, not a harness's: nginx connects to the app's Unix socket, keeps a
    found message in its cache in shared memory, and writes the one access line per request
    (with the cache status); the app writes none."""
    status, body = post(run, f"as shipped {time.monotonic_ns()}")
    assert status == 201
    ids = [f"shipped-{time.monotonic_ns()}-{i}" for i in range(3)]
    for request_id in ids:
        r = requests.get(
            f"{run.url}/messages/{body['digest']}",
            verify=CERT,
            timeout=10,
            headers={"X-Request-ID": request_id},
        )
        assert r.status_code == 200 and "immutable" in r.headers["Cache-Control"]
    logs = run.state_dir / "logs"

    def edge_lines() -> list[dict] | None:  # nginx writes its log in blocks, once a second
        text = (logs / "nginx" / "current").read_text()
        found = {
            x["request_id"]: x
            for x in map(json.loads, (line for line in text.splitlines() if line.startswith("{")))
            if x["request_id"] in ids
        }
        return [found[i] for i in ids] if len(found) == len(ids) else None

    until(lambda: edge_lines() is not None, 10)
    first, _, third = edge_lines()  # kept from its second read on
    assert (first["cache"], first["upstream_addr"]) == (
        "MISS",
        f"unix:{run.state_dir / 'run' / 'app-1.sock'}",
    )
    assert (third["cache"], third["upstream_addr"]) == ("HIT", "")
    cache = edge_cache_dir(StackConfig.from_env(run.env))
    assert cache.parent == SHARED_MEMORY and any(p.is_file() for p in cache.rglob("*"))
    assert not any(i in (logs / "app" / "current").read_text() for i in ids)


def alive(proc: psutil.Process) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def others(run: MakeRun, component: str) -> dict[str, int | None]:
    """The pids of every other component."""
    return {name: pid for name, (_, pid, _) in run.status().items() if name != component}


def test_redis_killed_is_serving_again_within_5_s_and_loses_nothing(run):
    status, body = post(run, "acknowledged before the crash")
    assert status == 201
    before = others(run, "redis")
    took, answers = outage(run, "redis")
    assert took < 5
    # Meanwhile: quick JSON 503s from the app, never a refused connection or a hang.
    assert all(
        s == 503 and b == {"err_msg": "Store unavailable, try again later"} for s, b in answers
    ), answers
    r = requests.get(f"{run.url}/messages/{body['digest']}", verify=CERT, timeout=5)
    assert r.json() == {"message": "acknowledged before the crash"}
    assert others(run, "redis") == before
    assert run.status()["redis"][2] == 1  # one restart
    assert "redis: killed by SIGKILL; restart 1 now" in run.console()


def test_healthz_answers_while_redis_is_down(run):
    redis = psutil.Process(run.pid("redis"))
    redis.send_signal(signal.SIGSTOP)  # down for as long as the test needs
    try:
        r = requests.get(run.url + "/healthz", verify=CERT, timeout=5)
        assert r.status_code == 200
        r = requests.get(run.url + "/readyz", verify=CERT, timeout=5)
        assert r.status_code == 503 and r.json()["err_msg"]
    finally:
        redis.send_signal(signal.SIGCONT)


def test_the_app_killed_is_serving_again_within_10_s(run):
    master = psutil.Process(run.pid("app"))
    workers = master.children()
    before = others(run, "app")
    took, answers = outage(run, "app")
    assert took < 10
    # Meanwhile: nginx answers, with a JSON 502: never a refused connection.
    assert {s for s, _ in answers} <= {502}, answers
    assert all(isinstance(b, dict) and b.get("err_msg") for _, b in answers), answers
    # The supervisor cleared the dead master's workers, so that the new one could listen.
    assert not any(alive(w) for w in workers)
    assert others(run, "app") == before


def test_nginx_killed_is_serving_again_within_10_s(run):
    workers = psutil.Process(run.pid("nginx")).children()
    before = others(run, "nginx")
    took, _ = outage(run, "nginx")
    assert took < 10
    assert not any(alive(w) for w in workers)
    assert others(run, "nginx") == before


@pytest.mark.parametrize("component", sorted(MONITORING))
def test_a_monitoring_component_killed_is_back_within_10_s(run, component):
    port, path = MONITORING[component]
    url = f"http://127.0.0.1:{run.port(port)}{path}"
    victim = run.pid(component)
    before = others(run, component)
    psutil.Process(victim).kill()

    def back() -> bool:
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    took = until(lambda: run.status()[component][1] not in (None, victim) and back(), 10)
    print(f"\n{component} killed: answering again after {took:.2f} s")
    assert run.pid(component) != victim
    assert others(run, component) == before
    assert post(run, f"while {component} restarted")[0] == 201


def alerts(run: MakeRun, name: str) -> list[dict]:
    """The alerts of that name Alertmanager holds."""
    url = f"http://127.0.0.1:{run.port('ALERTMANAGER')}/api/v2/alerts"
    return requests.get(url, params={"filter": f'alertname="{name}"'}, timeout=5).json()


def test_a_frozen_redis_answers_503_within_a_second_and_reaches_alertmanager(run):
    redis = psutil.Process(run.pid("redis"))
    redis.send_signal(signal.SIGSTOP)  # alive but silent: no supervisor notices this
    frozen = time.monotonic()
    try:
        for i in range(3):
            started = time.monotonic()
            status, body = post(run, f"frozen {i}")
            took = time.monotonic() - started
            assert status == 503 and body["err_msg"], body
            assert took < 1, f"a 503 took {took:.2f} s"
        took = until(lambda: alerts(run, "RedisDown"), 90, every=1)
        print(f"\nRedis frozen: RedisDown in Alertmanager after {time.monotonic() - frozen:.0f} s")
        assert alerts(run, "RedisDown")[0]["labels"]["severity"] == "critical"
    finally:
        redis.send_signal(signal.SIGCONT)
    until(lambda: post(run, "thawed")[0] == 201, 5)


def test_a_crash_loop_is_given_up_visible_and_alerted_then_restartable(run):
    """mtail killed as soon as it is back, again and again: after RESTART_LIMIT deaths within
    the window the supervisor stops restarting it, and says so everywhere."""
    said = "mtail: killed by SIGKILL"
    deaths, earlier = 0, run.console().count(said)  # an earlier test may have killed it once
    while run.status()["mtail"][0] != "GIVEN UP":
        assert deaths < 5, run.status()["mtail"]
        until(lambda: run.status()["mtail"][0] == "up", 15, every=0.2)
        psutil.Process(run.pid("mtail")).kill()
        deaths += 1
        until(lambda d=deaths: run.console().count(said) >= earlier + d, 10)
    # RESTART_LIMIT deaths within RESTART_WINDOW_SECONDS, as shipped.
    assert "mtail: killed by SIGKILL; died 5 times within 60 s: GIVEN UP" in run.console()
    assert run.status()["mtail"][1] is None  # not running
    assert post(run, "mtail is down, the API is not")[0] == 201
    # The node exporter serves it; Prometheus scrapes it; the alert reaches Alertmanager.
    metrics = requests.get(f"http://127.0.0.1:{run.port('NODE_EXPORTER')}/metrics", timeout=5)
    assert 'supervisor_component_given_up{component="mtail"} 1' in metrics.text
    until(lambda: alerts(run, "ComponentGivenUp"), 90, every=1)
    # And the edge metrics' scrape target is down: a page, as the SLO pages depend on it.
    until(
        lambda: any(a["labels"].get("job") == "edge" for a in alerts(run, "PageSourceMissing")),
        180,
        every=1,
    )
    # Every dashboard panel on the supervisor's metrics shows this.
    prometheus = f"http://127.0.0.1:{run.port('PROMETHEUS')}/api/v1/query"
    for dashboard, panel, expr in [q for q in QUERIES if SUPERVISOR_METRICS in q[2]]:
        answer = requests.get(prometheus, params={"query": substitute(expr)}, timeout=5).json()
        values = [float(r["value"][1]) for r in answer["data"]["result"]]
        assert values and max(values) >= 1, f"{dashboard} / {panel}: {answer}"
    # make restart brings it back.
    out = run.tool("restart", "C=mtail")
    assert out.returncode == 0, out.stderr
    until(lambda: run.status()["mtail"][0] == "up", 10, every=0.2)
