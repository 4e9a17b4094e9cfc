"""Grafana dashboards and provisioning. No Grafana server runs here, so: the files are checked
for what Grafana reads, and every panel's and annotation's PromQL is run against a real
Prometheus scraping the native stack under the load generator's traffic, with a real alert
firing; a query that returns nothing fails. What the annotations mark over time (a deploy, not
a restart) is checked on synthetic series by promtool, Prometheus's own engine."""

from __future__ import annotations

import json
import re
import subprocess
import time
from itertools import combinations

import pytest
import redis
import requests
import yaml

from native.settings import ROOT
from tests.dashboards import (
    ANNOTATIONS,
    DASHBOARDS,
    GRAFANA,
    HEALTH,
    QUERIES,
    REDS,
    SUPERVISOR_METRICS,
    VARIABLE,
    datasource_uid,
    panels,
    substitute,
)
from tests.harness import EVERYTHING, make_stack
from tests.helpers import eventually, prometheus_query, prometheus_rules

DATASOURCES = yaml.safe_load(
    (GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text()
)
PROVIDERS = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
DATASOURCE_UIDS = {d["uid"]: d["type"] for d in DATASOURCES["datasources"]}
HARNESS_QUERIES = [q for q in QUERIES if SUPERVISOR_METRICS not in q[2]]
ALERT_RULES = prometheus_rules("alert")
RECORDING_RULES = {rule["record"]: rule["expr"] for rule in prometheus_rules("record")}
# Alerts that fire all the time on purpose (a dead man's switch): the dashboards leave them
# out of what is wrong now. Watchdog is the one they name.
HEARTBEATS = {"Watchdog"} | {r["alert"] for r in ALERT_RULES if r["expr"].strip() == "vector(1)"}
# Grafana's ways of drawing thresholds on a time series ("off", the default, draws none).
THRESHOLD_STYLES = {"line", "dashed", "line+area", "dashed+area", "area"}
# A burn-rate target: an SLI's error ratio over a window, divided by the error budget.
BURN_RATE = re.compile(
    r"slo:edge_(\w+):error_ratio_rate(\w+) / scalar\(slo:edge_(\w+):error_budget\)"
)


def test_the_four_dashboards_exist():
    titles = {b["title"] for b in DASHBOARDS.values()}
    for part in ("overview", "edge", "Redis", "resources"):
        assert any(part in t for t in titles), part


def test_uids_are_pinned_and_unique():
    uids = [b["uid"] for b in DASHBOARDS.values()]
    assert len(uids) == len(set(uids))
    for name, board in DASHBOARDS.items():
        assert board["id"] is None, name
        assert name == f"{board['uid']}.json"
        assert board["tags"], name
        assert board["links"], f"{name} links to the other dashboards"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_have_unique_ids_and_do_not_overlap(name):
    board = DASHBOARDS[name]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))

    def cells(p):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        return {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }

    for a, b in combinations(board["panels"], 2):
        assert not cells(a) & cells(b), f"{a['title']} overlaps {b['title']}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_use_provisioned_datasources_and_say_what_they_show(name):
    board = DASHBOARDS[name]

    def check(reference: dict, what: str) -> None:
        if reference["type"] == "prometheus":  # the one chosen on the dashboard
            assert reference["uid"] == "${datasource}", what
        uid = datasource_uid(board, reference)
        assert uid in DATASOURCE_UIDS, what
        assert reference["type"] == DATASOURCE_UIDS[uid], what

    for panel in panels(board):
        if panel["type"] == "row":
            continue
        check(panel["datasource"], panel["title"])
        assert panel.get("description"), f"{panel['title']} has no description"
        for target in panel.get("targets", []):
            check(target["datasource"], panel["title"])
            assert target["datasource"] == panel["datasource"], panel["title"]
        if panel["type"] in ("timeseries", "stat", "state-timeline"):
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            check(variable["datasource"], variable["name"])
    for annotation in board["annotations"]["list"]:
        check(annotation["datasource"], annotation["name"])


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_the_datasource_is_a_variable_that_defaults_to_the_provisioned_prometheus(name):
    variables = DASHBOARDS[name]["templating"]["list"]
    source = variables[0]  # first: the query variables after it query the data source it picks
    assert source["name"] == "datasource"
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"  # it offers the Prometheus data sources
    assert not source["multi"] and not source["includeAll"]
    (prometheus,) = [d for d in DATASOURCES["datasources"] if d["type"] == "prometheus"]
    assert source["current"] == {"text": prometheus["name"], "value": prometheus["uid"]}
    assert [v["name"] for v in variables].count("datasource") == 1


def test_queries_use_only_variables_the_dashboards_define():
    for dashboard, title, expr in QUERIES + ANNOTATIONS:
        left = [
            m[0] for m in VARIABLE.finditer(substitute(expr)) if not m[0].strip("${}").isdigit()
        ]
        assert not left, f"{dashboard} / {title}: {left} in {expr}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_time_series_draw_their_thresholds(name):
    for panel in panels(DASHBOARDS[name]):
        if panel["type"] != "timeseries":
            continue
        defaults = panel["fieldConfig"]["defaults"]
        steps = [s["value"] for s in defaults.get("thresholds", {}).get("steps", [])]
        style = defaults.get("custom", {}).get("thresholdsStyle", {"mode": "off"})["mode"]
        if any(value is not None for value in steps):
            assert style in THRESHOLD_STYLES, f"{panel['title']} does not draw {steps}"
        else:  # Grafana would draw its default threshold, 80
            assert style == "off", f"{panel['title']} draws thresholds it does not define"


def alert_burn_rates(sli: str) -> dict[str, float]:
    """The burn rate an SLO's alerts fire above, by long window: each "(<long window> >
    factor * scalar(<the SLO's error budget>) and <short window> > ...)" of the alerts."""
    pair = re.compile(
        rf"\(slo:edge_{sli}:error_ratio_rate(\w+) > ([\d.]+) "
        rf"\* scalar\(slo:edge_{sli}:error_budget\) and "
    )
    return {
        window: float(factor)
        for rule in ALERT_RULES
        for window, factor in pair.findall(rule["expr"])
    }


def test_burn_rate_panels_divide_by_the_budget_and_draw_where_the_alerts_fire():
    burn_rates = [
        (panel, [BURN_RATE.fullmatch(t["expr"]) for t in panel["targets"]])
        for board in DASHBOARDS.values()
        for panel in panels(board)
        if panel.get("targets") and all(BURN_RATE.fullmatch(t["expr"]) for t in panel["targets"])
    ]
    assert {found[0][1] for _, found in burn_rates} == {"availability", "latency"}
    for panel, found in burn_rates:
        (sli,) = {m[1] for m in found}
        rates = alert_burn_rates(sli)
        assert {m[3] for m in found} == {sli}, panel["title"]  # divided by its own budget
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        drawn = {s["value"] for s in steps if s["value"] is not None}
        assert drawn == {rates[m[2]] for m in found}, panel["title"]


def test_the_5xx_ratio_counts_the_requests_the_availability_slo_counts():
    (api,) = set(
        re.findall(r'route=~"([^"]+)"', RECORDING_RULES["slo:edge_availability:error_ratio_rate5m"])
    )
    (panel,) = [
        p
        for p in panels(DASHBOARDS["messages-overview.json"])
        if p["title"].startswith("5xx ratio")
    ]
    for target in panel["targets"]:
        if target["expr"] == "scalar(slo:edge_availability:error_budget)":
            continue  # the budget, drawn beside the ratios
        metrics = re.findall(
            r"edge_http_requests_total|flask_http_request_duration_seconds_count", target["expr"]
        )
        selectors = re.findall(r"(edge_http_\w+|flask_http_\w+)\{([^}]*)\}", target["expr"])
        assert metrics and len(selectors) == len(metrics), target["expr"]
        for metric, matchers in selectors:
            label = "route" if metric.startswith("edge_") else "path"  # the app's name for it
            assert f'{label}=~"{api}"' in matchers.split(","), target["expr"]


# Stats that can turn red but are not run against a failure, and why.
NOT_HEALTH = {
    ("messages-overview.json", "Availability"): "30 days of requests: an outage moves it slowly",
    ("messages-overview.json", "Availability error budget left"): "30 days, as above",
    ("messages-overview.json", "Latency SLO attainment"): "30 days, as above",
    ("messages-overview.json", "Latency error budget left"): "30 days, as above",
    ("messages-edge.json", "Certificate expires in"): "days left, not a failure",
    ("messages-redis.json", "Memory used of maxmemory"): "how full Redis is, not whether it runs",
    ("messages-redis.json", "AOF writes OK"): "persistence failing (a full disk), not run here",
    ("messages-redis.json", "Last RDB save OK"): "as above",
    ("messages-resources.json", "Components given up"): "make run's supervisor only",
}


def can_turn_red(panel: dict) -> bool:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    steps = defaults.get("thresholds", {}).get("steps", [])
    mapped = [r.get("color") for m in defaults.get("mappings", []) for r in m["options"].values()]
    return any(s["color"] in REDS for s in steps) or any(c in REDS for c in mapped)


def test_every_stat_that_can_turn_red_is_a_health_panel_or_says_why_not():
    health = {(d, t) for d, titles in HEALTH.items() for t in titles}
    red_capable = {
        (name, p["title"])
        for name, board in DASHBOARDS.items()
        for p in panels(board)
        if p["type"] in ("stat", "state-timeline") and can_turn_red(p)
    }
    assert health <= red_capable
    assert red_capable - health == set(NOT_HEALTH)


# Panels that draw an alert's level, and the alert: the line says "the alert fires here",
# which is true only where the panel shows what the alert measures.
ALERT_LEVELS = {
    ("messages-resources.json", "CPU by component"): "ComponentCPUHigh",
    ("messages-resources.json", "Host CPU"): "HostCPUHigh",
    ("messages-resources.json", "Host memory"): "HostMemoryLow",
    ("messages-redis.json", "Memory used of maxmemory"): "RedisMemoryHigh",
    ("messages-redis.json", "Memory used of maxmemory by instance"): "RedisMemoryHigh",
}


def one_line(expr: str) -> str:
    return " ".join(expr.split())


@pytest.mark.parametrize(("dashboard", "title"), sorted(ALERT_LEVELS))
def test_a_panel_draws_its_alerts_level_on_what_the_alert_measures(dashboard, title):
    (rule,) = [r for r in ALERT_RULES if r["alert"] == ALERT_LEVELS[dashboard, title]]
    measured, level = re.fullmatch(r"(.+) > ([\d.]+)", one_line(rule["expr"])).groups()
    (panel,) = [p for p in panels(DASHBOARDS[dashboard]) if p["title"] == title]
    (target,) = panel["targets"]
    # The stat of the worst one (max) shows the same quantity.
    assert one_line(target["expr"]) in (measured, f"max({measured})"), rule["alert"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    (red,) = [s["value"] for s in steps if s["color"] in REDS]
    assert red == float(level), rule["alert"]


def test_memory_panels_say_what_memory_each_runtime_measures():
    """component:memory_resident_bytes is resident memory natively but cAdvisor's working set
    (resident plus active page cache) in compose: a panel of it says which is which."""
    rule = RECORDING_RULES["component:memory_resident_bytes"]
    assert "resident" in rule and "working_set" in rule
    showing = [
        p
        for board in DASHBOARDS.values()
        for p in panels(board)
        if any("component:memory_resident_bytes" in t["expr"] for t in p.get("targets", []))
    ]
    assert showing
    for panel in showing:
        words = f"{panel['title']} {panel['description']}".lower()
        assert "resident" in words and "working set" in words, panel["title"]
        assert not panel["title"].lower().startswith("resident"), panel["title"]


# Panels that set the edge's numbers beside the app's, which count fewer requests: cache
# hits and nginx's own answers never reach the app.
EDGE_BESIDE_APP = [
    ("messages-edge.json", "Latency: edge vs upstream (p99)"),
    ("messages-overview.json", "5xx ratio: app and edge"),
]


@pytest.mark.parametrize(("dashboard", "title"), EDGE_BESIDE_APP)
def test_edge_beside_app_says_they_count_different_requests(dashboard, title):
    (panel,) = [p for p in panels(DASHBOARDS[dashboard]) if p["title"] == title]
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert "edge_http_request" in exprs
    assert "flask_http_request" in exprs or "edge_upstream_response" in exprs
    text = panel["description"]
    assert "cache hits" in text and "nginx's own" in text, title
    # Not a difference read as nginx's share: the two are not the same requests.
    assert "gap" not in text.lower(), title


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_annotations_mark_deploys_and_firing_alerts(name):
    annotations = DASHBOARDS[name]["annotations"]["list"]
    exprs = [a["expr"] for a in annotations]
    assert any("messages_build_info" in e for e in exprs), "deploys"
    assert any(re.search(r'ALERTS\{[^}]*alertstate="firing"', e) for e in exprs), "alerts"
    for annotation in annotations:
        assert annotation["enable"] and not annotation["hide"], annotation["name"]
        assert annotation["titleFormat"] and annotation["iconColor"], annotation["name"]


def labels_shown(annotation: dict) -> set[str]:
    """The labels an annotation's title, text and tags are made of."""
    text = annotation["titleFormat"] + annotation["textFormat"]
    tags = {t.strip() for t in annotation["tagKeys"].split(",")} - {""}
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text)) | tags


def promtool(tmp_path, series: list[dict], cases: list[dict]) -> None:
    """Check expressions on synthetic series, a sample a minute, with promtool."""
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": cases}],
    }
    path = tmp_path / "annotations_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    check = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def expected(expr: str, minute: int, *samples: str) -> dict:
    return {
        "expr": expr,
        "eval_time": f"{minute}m",
        "exp_samples": [{"labels": labels, "value": 1} for labels in samples],
    }


@pytest.mark.parametrize("expr", sorted({e for _, _, e in ANNOTATIONS if "build_info" in e}))
def test_the_deploy_annotation_marks_a_new_build_and_not_a_restart(tmp_path, expr):
    build = (
        'messages_build_info{{job="app",instance="app:8000",version="{}",revision="{}",'
        'python="3.11.7"}}'
    )
    series = [
        # 1.0.0 from the start; the app restarts at 10m (a failed scrape, then the same
        # build again); 1.1.0 replaces it at 20m.
        {"series": build.format("1.0.0", "aaa"), "values": "1x9 stale 1x8 stale"},
        {"series": build.format("1.1.0", "bbb"), "values": "_x20 1x9"},
    ]
    first, second = '{version="1.0.0",revision="aaa"}', '{version="1.1.0",revision="bbb"}'
    cases = [
        expected(expr, 0, first),  # the first deploy
        expected(expr, 6),
        expected(expr, 11),  # the restart
        expected(expr, 13),
        expected(expr, 20, second),
        expected(expr, 24, second),
        expected(expr, 26),
    ]
    promtool(tmp_path, series, cases)


@pytest.mark.parametrize("expr", sorted({e for _, _, e in ANNOTATIONS if "ALERTS" in e}))
def test_the_alert_annotation_marks_firing_alerts_not_pending_ones_or_heartbeats(tmp_path, expr):
    firing = 'alertname="RedisDown",alertstate="firing",severity="critical"'
    pending = 'alertname="HostCPUHigh",alertstate="pending",severity="warning"'
    series = [
        {"series": f'ALERTS{{{firing},instance="redis:9121",job="redis"}}', "values": "_x2 1x3"},
        {"series": f'ALERTS{{{pending},instance="node:9100",job="node"}}', "values": "1x5"},
    ] + [
        {
            "series": f'ALERTS{{alertname="{name}",alertstate="firing",severity="none"}}',
            "values": "1x5",
        }
        for name in sorted(HEARTBEATS)
    ]
    cases = [
        expected(expr, 1),
        expected(expr, 3, '{alertname="RedisDown",severity="critical"}'),
    ]
    promtool(tmp_path, series, cases)


def test_dashboard_provider_loads_the_mounted_folder():
    assert PROVIDERS["apiVersion"] == 1
    (provider,) = PROVIDERS["providers"]
    assert {"name", "type", "options"} <= provider.keys()
    assert provider["type"] == "file"
    mounts = dict(v.split(":")[:2] for v in COMPOSE["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_datasources_have_the_keys_grafana_reads():
    assert DATASOURCES["apiVersion"] == 1
    uids = [d["uid"] for d in DATASOURCES["datasources"]]
    assert len(uids) == len(set(uids))
    for source in DATASOURCES["datasources"]:
        assert {"name", "uid", "type", "access", "url"} <= source.keys()
        assert source["access"] in ("proxy", "direct")
        host = re.match(r"https?://([^:/]+)", source["url"]).group(1)
        assert host in COMPOSE, f"{source['name']} points at {host}, not a compose service"
    assert sum(1 for d in DATASOURCES["datasources"] if d.get("isDefault")) == 1
    assert set(DATASOURCE_UIDS) == {"prometheus", "alertmanager", "jaeger"}


def test_grafana_in_compose_is_pinned_private_and_has_no_default_password():
    grafana = COMPOSE["grafana"]
    assert re.search(r":\d+\.\d+\.\d+$", grafana["image"])
    assert all(p.startswith("127.0.0.1:") for p in grafana["ports"])
    # The password is a required compose secret (tests/test_security.py), read from its file.
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]


# The real alert the loaded stack fires for the alert panels and annotations to show.
REFUSED = "RedisRejectingConnections"
# Seconds after which Prometheus has stored every rule evaluation (one a second) up to then.
SETTLED = 2


def refuse_a_redis_connection(stack) -> None:
    """Redis at its maxclients refuses a client: RedisRejectingConnections fires (for five
    minutes, the window of its increase()). The limit is back at once."""
    address = {"port": stack.cfg.ports["redis"]}
    password = stack.cfg.redis_password_file.read_text().strip()
    admin = redis.Redis(**address, password=password, single_connection_client=True)
    limit = admin.config_get("maxclients")["maxclients"]
    refused = admin.info("stats")["rejected_connections"]
    admin.config_set("maxclients", 1)
    try:
        with pytest.raises(redis.ConnectionError):
            redis.Redis(**address, password=password).ping()
    finally:
        admin.config_set("maxclients", limit)
    assert admin.info("stats")["rejected_connections"] > refused
    admin.close()


@pytest.fixture(scope="module")
def loaded_stack(tmp_path_factory):
    """The whole native stack after the load generator's traffic, scraped every second, with
    one alert firing."""
    tmp = tmp_path_factory.mktemp("dashboards")
    stack = make_stack(tmp, EVERYTHING, SCRAPE_INTERVAL="1s", RATE_LIMIT_RPS="10000")
    stack.start()
    traffic = ["--script", str(ROOT / "loadgen" / "traffic.lua"), stack.url, "--", "20"]
    wrk = ["wrk", "--threads", "1", "--connections", "4", "--duration", "12s", *traffic]
    subprocess.run(wrk, check=True, capture_output=True, timeout=60)
    refuse_a_redis_connection(stack)
    firing = f'ALERTS{{alertname="{REFUSED}",alertstate="firing"}}'
    eventually(lambda: query(stack, firing, time.time() - SETTLED)["data"]["result"], 60)
    # The 1-, 3- and 30-day SLO windows are evaluated once a minute (whatever the scrape
    # interval), from the 5-minute rates: the budget panels have data once that group has
    # run after the traffic.
    long_windows = (
        "slo:edge_availability:error_ratio_rate30d and slo:edge_latency:error_ratio_rate30d"
    )
    eventually(lambda: query(stack, long_windows)["data"]["result"], 90)
    yield stack
    stack.stop()


def query(stack, expr: str, at: float | None = None) -> dict:
    return prometheus_query(stack.cfg.address("prometheus"), expr, at)


def query_range(stack, expr: str, start: float, end: float, step: str) -> dict:
    url = f"http://{stack.cfg.address('prometheus')}/api/v1/query_range"
    params = {"query": expr, "start": start, "end": end, "step": step}
    return requests.get(url, params=params, timeout=10).json()


@pytest.mark.stack
def test_the_load_generator_sends_reads_writes_misses_and_bad_requests(loaded_stack):
    result = query(loaded_stack, "sum by (status) (edge_http_requests_total)")
    statuses = {r["metric"]["status"] for r in result["data"]["result"]}
    assert {"200", "201", "404", "400", "415"} <= statuses


@pytest.mark.stack
@pytest.mark.parametrize(("dashboard", "panel", "expr"), HARNESS_QUERIES)
def test_every_panel_query_is_valid_and_returns_data(loaded_stack, dashboard, panel, expr):
    answer = query(loaded_stack, substitute(expr))
    assert answer["status"] == "success", answer.get("error")
    assert answer["data"]["result"], f"{dashboard} / {panel}: no data for {substitute(expr)}"


@pytest.mark.stack
@pytest.mark.parametrize(("dashboard", "name", "expr"), ANNOTATIONS)
def test_every_annotation_query_is_valid_and_marks_something(loaded_stack, dashboard, name, expr):
    """Run as Grafana runs it: over the dashboard's time range. The stack's first deploy and
    the fixture's alert are in it; each mark has the labels its text is made of."""
    board = DASHBOARDS[dashboard]
    (annotation,) = [a for a in board["annotations"]["list"] if a["name"] == name]
    amount, unit = re.fullmatch(r"now-(\d+)([mhd])", board["time"]["from"]).groups()
    end = time.time()
    start = end - int(amount) * {"m": 60, "h": 3600, "d": 86400}[unit]
    answer = query_range(loaded_stack, substitute(expr), start, end, "1s")
    assert answer["status"] == "success", answer.get("error")
    marks = answer["data"]["result"]
    # Grafana marks the times a series' value is above 0.
    assert any(float(v) > 0 for mark in marks for _, v in mark["values"]), f"{dashboard} / {name}"
    for mark in marks:
        assert labels_shown(annotation) <= mark["metric"].keys(), mark["metric"]


@pytest.mark.stack
def test_alert_panels_and_annotations_show_what_fires_but_not_heartbeats(loaded_stack):
    at = time.time() - SETTLED  # one moment for every query, all of its evaluations stored
    firing = query(loaded_stack, 'ALERTS{alertstate="firing"}', at)["data"]["result"]
    shown = [r["metric"] for r in firing if r["metric"]["alertname"] not in HEARTBEATS]
    names = {m["alertname"] for m in shown}
    assert REFUSED in names
    views = [q for q in QUERIES + ANNOTATIONS if "ALERTS" in q[2]]
    assert len(views) >= 2 + len(DASHBOARDS)  # the count, the table, an annotation each
    for dashboard, title, expr in views:
        result = query(loaded_stack, substitute(expr), at)["data"]["result"]
        if expr.startswith("count("):
            (count,) = result
            assert float(count["value"][1]) == len(shown), f"{dashboard} / {title}"
        else:
            assert {r["metric"]["alertname"] for r in result} == names, f"{dashboard} / {title}"
    (table,) = [e for d, t, e in QUERIES if t == "Active alerts"]
    rows = query(loaded_stack, substitute(table), at)["data"]["result"]
    assert sorted(json.dumps(r["metric"], sort_keys=True) for r in rows) == sorted(
        json.dumps(m, sort_keys=True) for m in shown
    )


@pytest.mark.stack
def test_the_edge_counts_requests_the_upstream_never_sees(loaded_stack):
    """What EDGE_BESIDE_APP's descriptions say: under the load generator's traffic, cache
    hits make the edge count more reads than reached the app."""
    route = 'route="/messages/<digest>"'
    edge = query(loaded_stack, f"sum(edge_http_request_duration_seconds_count{{{route}}})")
    upstream = query(loaded_stack, f"sum(edge_upstream_response_duration_seconds_count{{{route}}})")
    hits = query(loaded_stack, f'sum(edge_cache_requests_total{{cache="HIT",{route}}})')
    (edge,), (upstream,), (hits,) = (r["data"]["result"] for r in (edge, upstream, hits))
    assert float(hits["value"][1]) > 0
    assert float(edge["value"][1]) >= float(upstream["value"][1]) + float(hits["value"][1])


@pytest.mark.stack
def test_messages_stored_is_the_number_of_keys_in_the_single_redis(loaded_stack):
    (target,) = [
        t
        for p in panels(DASHBOARDS["messages-redis.json"])
        if p["title"] == "Messages stored"
        for t in p["targets"]
    ]
    keys = loaded_stack.redis.dbsize()
    shown = query(loaded_stack, substitute(target["expr"]))["data"]["result"]
    assert [float(r["value"][1]) for r in shown] == [keys]


@pytest.mark.stack
def test_the_5xx_ratio_and_the_slo_leave_out_the_same_routes(loaded_stack):
    (api,) = set(re.findall(r'route=~"([^"]+)"', RECORDING_RULES["slo:edge_api_requests:rate5m"]))

    def values(expr: str, label: str) -> set[str]:
        return {r["metric"][label] for r in query(loaded_stack, expr)["data"]["result"]}

    every_route = values("count by (route) (edge_http_requests_total)", "route")
    edge = values(f'count by (route) (edge_http_requests_total{{route=~"{api}"}})', "route")
    app = values(
        f'count by (path) (flask_http_request_duration_seconds_count{{path=~"{api}"}})', "path"
    )
    assert "/healthz" in every_route - edge  # the probe's, left out
    assert edge == app and edge


@pytest.mark.stack
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_template_variables_have_values(loaded_stack, name):
    for variable in DASHBOARDS[name]["templating"]["list"]:
        if variable["type"] != "query":  # the datasource variable: see its own test
            continue
        metric, label = re.fullmatch(
            r"label_values\((.+), (\w+)\)", variable["definition"]
        ).groups()
        answer = query(loaded_stack, f"count by ({label}) ({metric})")
        assert answer["data"]["result"], variable["name"]
