"""Grafana dashboards and provisioning. No Grafana server runs here, so: the files are checked
for what Grafana reads, and every panel's PromQL is run against a real Prometheus scraping the
native stack under the load generator's traffic; a query that returns nothing fails."""

from __future__ import annotations

import re
import subprocess
from itertools import combinations

import pytest
import requests
import yaml

from native.stack import ROOT
from tests.conftest import EVERYTHING, make_stack
from tests.dashboards import DASHBOARDS, GRAFANA, QUERIES, SUPERVISOR_METRICS, panels, substitute

DATASOURCES = yaml.safe_load(
    (GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text()
)
PROVIDERS = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
DATASOURCE_UIDS = {d["uid"]: d["type"] for d in DATASOURCES["datasources"]}
HARNESS_QUERIES = [q for q in QUERIES if SUPERVISOR_METRICS not in q[2]]


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
    for panel in panels(DASHBOARDS[name]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in DATASOURCE_UIDS, panel["title"]
        assert panel["datasource"]["type"] == DATASOURCE_UIDS[panel["datasource"]["uid"]]
        assert panel.get("description"), f"{panel['title']} has no description"
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] in DATASOURCE_UIDS
        if panel["type"] in ("timeseries", "stat", "state-timeline"):
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
    for variable in DASHBOARDS[name]["templating"]["list"]:
        assert variable["datasource"]["uid"] in DATASOURCE_UIDS


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


@pytest.fixture(scope="module")
def loaded_stack(tmp_path_factory):
    """The whole native stack after the load generator's traffic, scraped every second."""
    tmp = tmp_path_factory.mktemp("dashboards")
    stack = make_stack(tmp, EVERYTHING, SCRAPE_INTERVAL="1s", RATE_LIMIT_RPS="10000")
    stack.start()
    subprocess.run(
        ["wrk", "--threads", "1", "--connections", "4", "--duration", "12s",
         "--script", str(ROOT / "loadgen" / "traffic.lua"), stack.url, "--", "20"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    yield stack
    stack.stop()


def query(stack, expr: str) -> dict:
    url = f"http://{stack.cfg.address('prometheus')}/api/v1/query"
    return requests.get(url, params={"query": expr}, timeout=10).json()


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
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_template_variables_have_values(loaded_stack, name):
    for variable in DASHBOARDS[name]["templating"]["list"]:
        metric, label = re.fullmatch(
            r"label_values\((.+), (\w+)\)", variable["definition"]
        ).groups()
        answer = query(loaded_stack, f"count by ({label}) ({metric})")
        assert answer["data"]["result"], variable["name"]
