"""`make reload` on a real `make run`, under constant load through the edge: the app, nginx,
Prometheus and Alertmanager each take their new code or config without a failed request;
a broken config or broken code is refused with its reason, the old one keeps serving, and
ComponentReloadRefused fires.

make run runs from a copy of the repository, so that a test can break a file there (a
template, the rules, the app's code) as a bad deploy would, and never the real ones."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
import requests

from native.settings import ROOT
from tests.edge_load import CLIENTS, Load
from tests.helpers import eventually, prometheus_query
from tests.make_run import MakeRun, make_run_env
from tests.metrics_text import samples, value

pytestmark = pytest.mark.stack

NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".state", "__pycache__", ".*_cache", "*.egg-info", "results"
)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    """make run from a copy of the repository, rate limit lifted for the load, 1 s scrapes."""
    tmp = tmp_path_factory.mktemp("reload")
    root = tmp / "repo"
    # copy2 keeps modification times: make sees the venv as up to date for these files.
    shutil.copytree(ROOT, root, ignore=NOT_COPIED, symlinks=True)
    (root / ".venv").symlink_to(ROOT / ".venv")
    env = make_run_env(
        tmp / "state",
        RATE_LIMIT_RPS="100000",
        RATE_LIMIT_BURST="100000",
        SCRAPE_INTERVAL="1s",
    )
    run = MakeRun(state_dir=tmp / "state", env=env, root=root)
    try:
        yield run.start()
    finally:
        run.kill()


def reload(run: MakeRun, component: str) -> tuple[int, str]:
    done = run.tool("reload", f"C={component}")
    return done.returncode, done.stdout + done.stderr


def workers(run: MakeRun, component: str) -> set[int]:
    return {child.pid for child in psutil.Process(run.pid(component)).children()}


def own_metric(run: MakeRun, component: str, suffix: str) -> float:
    """Prometheus's or Alertmanager's own metric <component><suffix>."""
    text = requests.get(f"http://127.0.0.1:{run.port(component)}/metrics", timeout=10).text
    return value(text, component + suffix)


def last_reload(run: MakeRun, component: str) -> float:
    """When Prometheus or Alertmanager last loaded its config (0 for the others)."""
    if component not in ("prometheus", "alertmanager"):
        return 0.0
    return own_metric(run, component, "_config_last_reload_success_timestamp_seconds")


def alert_state(run: MakeRun, alert: str) -> str | None:
    """pending or firing, as Prometheus's ALERTS says; None if neither."""
    expr = f'ALERTS{{alertname="{alert}"}}'
    found = prometheus_query(f"127.0.0.1:{run.port('PROMETHEUS')}", expr)["data"]["result"]
    return found[0]["metric"]["alertstate"] if found else None


def firing(run: MakeRun, alert: str, component: str) -> bool:
    expr = f'ALERTS{{alertname="{alert}", component="{component}", alertstate="firing"}}'
    return bool(prometheus_query(f"127.0.0.1:{run.port('PROMETHEUS')}", expr)["data"]["result"])


def test_each_component_reloads_under_load_without_a_failed_request(running):
    measured = {}
    in_nginx_reload = 0
    with Load(running.url) as load:
        quiet = time.monotonic()
        time.sleep(3)  # the slowest answer without a reload, to compare
        baseline = load.slowest(quiet)
        for component in ("app", "nginx", "prometheus", "alertmanager"):
            master = running.pid(component)
            before = workers(running, component)
            reloaded_at = last_reload(running, component)
            served, started = load.served, time.monotonic()
            dropped = len(load.dropped)
            code, out = reload(running, component)
            print(out, end="")
            assert code == 0, out
            if component == "nginx":
                in_nginx_reload = len(load.dropped) - dropped
            measured[component] = (
                load.served - served,
                round(time.monotonic() - started, 1),
                round(load.slowest(started), 2),
            )
            assert running.pid(component) == master, "reloaded in place, not restarted"
            after = workers(running, component)
            if component == "app":
                assert after and not after & before, out  # every worker is new
            elif component == "nginx":
                assert after - before, out  # new workers; old ones may finish a request
            else:
                assert last_reload(running, component) > reloaded_at
                assert own_metric(running, component, "_config_last_reload_successful") == 1
            time.sleep(1)  # some load between reloads
    print(f"\nduring each reload (answered, seconds, slowest answer): {measured}")
    print(f"slowest answer in 3 s without a reload: {baseline:.2f} s")
    print(f"requests answered in all: {load.served}, failed: {len(load.failures)}")
    print(f"closed unanswered by nginx's reload, then answered: {load.dropped}")
    assert load.failures == [], load.failures
    # At most once per kept-alive connection, on nginx's reload only.
    assert len(load.dropped) <= CLIENTS, load.dropped
    assert in_nginx_reload == len(load.dropped), load.dropped
    assert all(count > 0 for count, _, _ in measured.values()), measured


@dataclass
class Breakage:
    """One file of the copy, broken as a bad deploy would, and what the refusal says."""

    component: str
    path: str  # in the repository
    broken: str  # what is appended to the file
    reason: str  # in make reload's output


BREAKAGES = [
    Breakage("nginx", "nginx/nginx.conf.template", "\nnot_a_directive on;\n", "unknown directive"),
    Breakage(
        "prometheus",
        "monitoring/prometheus/rules/alerts.yml",
        "      - alert: Broken\n        expr: rate(\n",
        "FAILED",
    ),
    Breakage(
        "alertmanager",
        "monitoring/alertmanager/alertmanager.yml.template",
        "\nnot_a_setting: true\n",
        "not_a_setting",
    ),
    Breakage("app", "service/api.py", "\ndef broken(:\n", "SyntaxError"),
]


@pytest.mark.parametrize("broken", BREAKAGES, ids=lambda b: b.component)
def test_a_broken_config_is_refused_the_old_one_serves_and_an_alert_fires(running, broken):
    path = running.root / broken.path
    original = path.read_text()
    master = running.pid(broken.component)
    before = workers(running, broken.component)
    rendered = {p: p.read_bytes() for p in (running.state_dir / broken.component).glob("*.yml")}
    rendered.update({p: p.read_bytes() for p in (running.state_dir / "nginx").glob("*.conf")})
    with Load(running.url) as load:
        try:
            path.write_text(original + broken.broken)
            code, out = reload(running, broken.component)
            assert code != 0, out
            assert "reload REFUSED" in out and broken.reason in out, out
            # The old config or code keeps serving: same processes, same files in use.
            assert running.pid(broken.component) == master
            if broken.component == "app":
                assert workers(running, "app") == before
            assert {p: p.read_bytes() for p in rendered} == rendered
            eventually(lambda: firing(running, "ComponentReloadRefused", broken.component), 60)
            served = load.served
            eventually(lambda: load.served > served + 20, 30)
        finally:
            path.write_text(original)
        # Fixed: the next reload goes through, and the refusal no longer holds.
        code, out = reload(running, broken.component)
        assert code == 0, out
    assert load.failures == [], load.failures
    # Only nginx's reload (of the fixed config) may close a kept-alive connection unread.
    assert len(load.dropped) <= (CLIENTS if broken.component == "nginx" else 0), load.dropped
    node = requests.get(f"http://127.0.0.1:{running.port('NODE_EXPORTER')}/metrics", timeout=10)
    refused = samples(node.text, "supervisor_component_reload_refused")
    assert ({"component": broken.component}, 0.0) in refused
    if broken.component in ("prometheus", "alertmanager"):
        # The process itself never saw the broken file: its own reload never failed.
        assert own_metric(running, broken.component, "_config_last_reload_successful") == 1


def test_app_code_the_gunicorn_master_loaded_is_refused_with_the_restart_to_use(running):
    # gunicorn's master imports service/config.py (for gunicorn.conf.py); new workers would
    # inherit the old module beside the new code of the others.
    config = running.root / "service" / "config.py"
    started = psutil.Process(running.pid("app")).create_time()
    os.utime(config, (started + 1, started + 1))
    try:
        code, out = reload(running, "app")
    finally:
        os.utime(config, (started - 1, started - 1))
    assert code != 0, out
    assert "service/config.py" in out and "make restart C=app" in out, out
    code, out = reload(running, "app")
    assert code == 0, out


def test_reload_names_what_it_reloads(running):
    code, out = reload(running, "redis")
    assert code != 0
    assert "'redis' is not a component it reloads" in out
    assert "app, nginx, alertmanager, prometheus" in out


def test_a_broken_config_signalled_from_elsewhere_is_kept_out_by_prometheus_and_alerted(running):
    # What compose's `docker compose kill -s HUP prometheus` does with a bad file: no check
    # first. Prometheus keeps its old config and says so; its own alert is pending (it waits
    # 10 minutes to fire), and the API is not affected.
    live = running.state_dir / "prometheus" / "prometheus.yml"
    good = live.read_text()
    pid = running.pid("prometheus")
    try:
        live.write_text(good + "\nnot_a_setting: true\n")
        os.kill(pid, signal.SIGHUP)
        eventually(
            lambda: own_metric(running, "prometheus", "_config_last_reload_successful") == 0, 30
        )
        eventually(lambda: alert_state(running, "PrometheusConfigReloadFailed") == "pending", 30)
    finally:
        live.write_text(good)
        os.kill(pid, signal.SIGHUP)
    eventually(lambda: own_metric(running, "prometheus", "_config_last_reload_successful") == 1, 30)
    assert running.pid("prometheus") == pid
