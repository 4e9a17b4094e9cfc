"""The docs say what the code does: the settings, metrics and alerts they list are exactly the
ones the code reads, exports and fires, with the code's defaults; every link inside them leads
somewhere; every doc says who it is for."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk import environment_variables as sdk_variables
from prometheus_client.parser import text_string_to_metric_families

from native import finish
from native.settings import ROOT, StackConfig
from service import telemetry
from service.app import create_app
from service.config import ServerSettings, Settings, available_cpus
from tests.compose_cli import BASE, CLUSTER

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
CONFIGURATION = DOCS / "configuration.md"
OBSERVABILITY = DOCS / "observability.md"
ALERT_RULES = ROOT / "monitoring" / "prometheus" / "rules" / "alerts.yml"
MTAIL_PROGRAM = ROOT / "monitoring" / "mtail" / "edge.mtail"


# --- Reading the docs ---


def table_rows(page: Path, first_header: str) -> Iterator[list[str]]:
    """The cells of every row of the page's tables whose first column is `first_header`."""
    in_table = False
    for line in page.read_text().splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not in_table:
            in_table = cells[0] == first_header
            continue
        if not set(cells[0]) <= set("-: "):  # not the |---| line
            yield cells


def code(cell: str) -> list[str]:
    """The `code` spans of a table cell."""
    return re.findall(r"`([^`]+)`", cell)


def documented_settings() -> dict[str, str]:
    """configuration.md's variables (names, or patterns with <k> or *) and their defaults."""
    rows = {}
    for cells in table_rows(CONFIGURATION, "variable"):
        names = code(cells[0])
        assert len(names) == 1 and cells[0] == f"`{names[0]}`", f"one variable a row: {cells[0]}"
        assert names[0] not in rows, f"{names[0]} is documented twice"
        rows[names[0]] = cells[1]
    return rows


def is_pattern(name: str) -> bool:
    return "<" in name or "*" in name


def pattern(name: str) -> re.Pattern[str]:
    """APP_<k>_PORT -> APP_[0-9]+_PORT; OTEL_BSP_* -> OTEL_BSP_[A-Z0-9_]+."""
    text = re.escape(name).replace(re.escape("<k>"), "[0-9]+").replace(r"\*", "[A-Z0-9_]+")
    return re.compile(text + "$")


def literal_default(cell: str) -> str | None:
    """The default a row states as a value (a cell starting with `code`), else None: prose
    such as "unset" or "usable CPUs + 1"."""
    match = re.match(r"`([^`]*)`", cell)
    return match.group(1) if match else None


# --- What the code reads ---


class RecordingEnv(dict):
    """An environment that remembers every name the code asks it for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


def comparable(value: Any) -> Any:
    """A settings object as something to compare: a dataclass without the caller's whole
    environment (which StackConfig keeps to pass on), a sampler by its description."""
    if is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in fields(value) if "env" not in f.name}
    if hasattr(value, "get_description"):
        return value.get_description()
    return value


# Each function that reads settings from a mapping, and how to call it. StackConfig is the
# runner's (native/settings.py); APP_INSTANCES=2 makes it read the second instance's ports.
READERS: dict[str, tuple[Callable[[Mapping[str, str]], Any], dict[str, str]]] = {
    "Settings": (Settings.from_env, {}),
    "ServerSettings": (ServerSettings.from_env, {}),
    "StackConfig": (StackConfig.from_env, {"APP_INSTANCES": "2"}),
    "tracing_enabled": (telemetry.tracing_enabled, {}),
    "sampler_from_env": (telemetry.sampler_from_env, {}),
    "semconv_opt_in": (telemetry.semconv_opt_in, {}),
}


def names_read_by(reader: str) -> set[str]:
    function, given = READERS[reader]
    env = RecordingEnv(given)
    function(env)
    return env.asked


READ_BY = {reader: names_read_by(reader) for reader in READERS}

# Reads outside those functions, found in the source: an environment variable named as a
# string literal (os.environ["X"], env.get("X"), "X" in os.environ).
SOURCE_READS = (
    re.compile(r'(?:os\.environ|\benv)(?:\.get\(|\.pop\(|\[)\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'"([A-Z][A-Z0-9_]*)"\s+(?:not\s+)?in\s+(?:os\.environ|env)\b'),
    re.compile(r'os\.getenv\(\s*"([A-Z][A-Z0-9_]*)"'),
)


def names_in_source() -> dict[str, Path]:
    found = {}
    for path in sorted([*(ROOT / "service").rglob("*.py"), *(ROOT / "native").rglob("*.py")]):
        text = path.read_text()
        for regex in SOURCE_READS:
            found.update({name: path for name in regex.findall(text)})
    return found


def compose_defaults() -> dict[str, str | None]:
    """Every variable the compose files fill in, with its default there (None: none)."""
    found: dict[str, str | None] = {}
    for path in (BASE, CLUSTER):
        # ${NAME...} that compose fills in; $${NAME} is left for the container's shell.
        for name, default in re.findall(r"(?<!\$)\$\{(\w+)(?::?-([^}$]*))?", path.read_text()):
            if default or name not in found:
                found[name] = default or None
    return found


def names_our_code_reads() -> set[str]:
    recorded = set().union(*READ_BY.values())
    return recorded | set(names_in_source()) | set(compose_defaults())


# The OTEL_* variables the OpenTelemetry SDK reads itself (the exporter, the batch processor,
# the resource): documented where an operator may want them, never read by our code.
SDK_NAMES = {name for name in dir(sdk_variables) if name.startswith("OTEL_")}


# --- Settings ---


def test_the_recording_sees_what_each_reader_reads():
    """A guard on the method: if a reader stopped reading through the mapping it is given
    (copying it first, say), nothing would be recorded and the checks below would be empty."""
    assert {"REDIS_URL", "MAX_BODY_BYTES"} <= READ_BY["Settings"]
    assert {"APP_BIND", "WEB_CONCURRENCY"} <= READ_BY["ServerSettings"]
    assert {"STATE_DIR", "EDGE_PORT", "APP_2_PORT", "ALERT_RECEIVER"} <= READ_BY["StackConfig"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in READ_BY["tracing_enabled"]
    assert "OTEL_TRACES_SAMPLER" in READ_BY["sampler_from_env"]
    assert "OTEL_SEMCONV_STABILITY_OPT_IN" in READ_BY["semconv_opt_in"]


def test_every_variable_the_code_reads_is_documented():
    documented = documented_settings()
    exact = {name for name in documented if not is_pattern(name)}
    numbered = [pattern(name) for name in documented if "<k>" in name]
    missing = {
        name
        for name in names_our_code_reads()
        if name not in exact and not any(p.match(name) for p in numbered)
    }
    assert not missing, f"read by the code, not in docs/configuration.md: {sorted(missing)}"


def test_every_documented_variable_is_read():
    known = names_our_code_reads() | SDK_NAMES
    unknown = set()
    for name in documented_settings():
        if is_pattern(name):
            if not any(pattern(name).match(n) for n in known):
                unknown.add(name)
        elif name not in known:
            unknown.add(name)
    assert not unknown, f"documented, but nothing reads them: {sorted(unknown)}"


def test_env_example_lists_only_documented_settings():
    """.env.example lists what compose reads (tests/test_compose.py); each is documented."""
    example = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.M))
    assert example
    assert example <= set(documented_settings()), example - set(documented_settings())


def test_documented_defaults_are_the_codes():
    """A default stated as a value is what each reader of that variable uses when the
    variable is unset (giving the value explicitly changes nothing), and what compose fills
    in. Each such default is checked against at least one of them."""
    compose = compose_defaults()
    unchecked, wrong = [], []
    for name, cell in documented_settings().items():
        value = literal_default(cell)
        if value is None or is_pattern(name):
            continue
        checked = False
        for reader, names in READ_BY.items():
            if name in names:
                function, given = READERS[reader]
                unset = {k: v for k, v in given.items() if k != name}
                if comparable(function({**unset, name: value})) != comparable(function(unset)):
                    wrong.append(f"{name}: `{value}` is not {reader}'s default")
                checked = True
        if compose.get(name) is not None:
            if compose[name] != value:
                wrong.append(f"{name}: `{value}`, compose's default is `{compose[name]}`")
            checked = True
        if not checked:
            unchecked.append(name)
    assert not wrong, wrong
    assert not unchecked, f"defaults nothing can confirm (write them as prose?): {unchecked}"


def test_the_workers_default_is_usable_cpus_plus_one():
    cell = documented_settings()["WEB_CONCURRENCY"]
    assert cell == "usable CPUs + 1"
    assert ServerSettings.from_env({}).workers == available_cpus() + 1


def test_every_native_port_is_documented_with_its_default():
    documented = documented_settings()
    ports = StackConfig.from_env({}).ports
    assert ports
    for part, port in ports.items():
        assert literal_default(documented[f"{part.upper()}_PORT"]) == str(port), part


# --- Metrics ---


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """observability.md's metric tables: name -> (type, label names). A label's values may
    follow it after ` = `; labels with values come last in the cell."""
    found = {}
    for cells in table_rows(OBSERVABILITY, "metric"):
        (name,) = code(cells[0])
        assert name not in found, f"{name} is documented twice"
        found[name] = (cells[1], set(code(cells[2].split(" = ")[0])))
    return found


def app_metrics() -> dict[str, tuple[str, set[str]]]:
    """What a real app registers (one registry per app: see service/metrics.py)."""
    app = create_app(Settings())
    registry = app.extensions["metrics_registry"]
    found = {}
    # prometheus_client gives label names only through its metric objects (the samples
    # have none until a first event), which the registry keeps in _collector_to_names.
    for metric in registry._collector_to_names:
        suffix = "_total" if metric._type == "counter" else ""
        found[metric._name + suffix] = (metric._type, set(metric._labelnames))
    return found


def mtail_metrics() -> dict[str, tuple[str, set[str]]]:
    text = MTAIL_PROGRAM.read_text()
    declaration = r"^(counter|gauge|histogram) (\w+)(?: by ([\w, ]+?))?(?: buckets|$)"
    declared = re.findall(declaration, text, re.M)
    return {name: (kind, set(re.findall(r"\w+", by))) for kind, name, by in declared}


def supervisor_metrics(tmp_path: Path) -> dict[str, tuple[str, set[str]]]:
    """What make run's supervisor writes for the node exporter when a component dies, and
    make reload when it refuses one."""
    finish.write_metrics(tmp_path, "redis", 1, given_up=False)
    finish.write_reload_metric(tmp_path, "nginx", refused=False)  # make reload's
    found = {}
    text = "".join(written.read_text() for written in sorted(tmp_path.glob("*.prom")))
    for family in text_string_to_metric_families(text):
        suffix = "_total" if family.type == "counter" else ""
        labels = set().union(*(sample.labels for sample in family.samples))
        found[family.name + suffix] = (family.type, labels)
    return found


def test_the_metric_sources_are_found(tmp_path):
    assert "messages_stored_total" in app_metrics()
    assert "edge_http_requests_total" in mtail_metrics()
    assert "supervisor_component_given_up" in supervisor_metrics(tmp_path)


def test_documented_metrics_are_exactly_the_exported_ones(tmp_path):
    exported = {**app_metrics(), **mtail_metrics(), **supervisor_metrics(tmp_path)}
    documented = documented_metrics()
    assert set(exported) - set(documented) == set(), "exported, not in observability.md"
    assert set(documented) - set(exported) == set(), "in observability.md, exported by nothing"
    for name, (kind, labels) in exported.items():
        assert documented[name] == (kind, labels), f"{name}: type and labels"


# --- Alerts ---


def test_documented_alerts_are_exactly_the_rules():
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    rules = {
        r["alert"]: r["labels"]["severity"] for g in groups for r in g["rules"] if "alert" in r
    }
    documented = {cells[0]: cells[1] for cells in table_rows(OBSERVABILITY, "alert")}
    assert set(rules) - set(documented) == set(), "alerts missing from observability.md"
    assert set(documented) - set(rules) == set(), "documented alerts that do not exist"
    assert documented == rules, "severities"


def test_each_documented_alert_links_to_its_own_runbook():
    for cells in table_rows(OBSERVABILITY, "alert"):
        assert f"(runbooks.md#{slug(cells[0])})" in cells[3], cells[0]


# --- Links and readers ---


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#+ (.+)$", without_code_blocks(page.read_text()), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def links(page: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", without_code_blocks(page.read_text()))
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_internal_links_lead_to_files_and_anchors_that_exist(page):
    broken = []
    for link in links(page):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no such heading in {target.name}")
    assert not broken, broken


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_each_doc_starts_with_its_reader(page):
    title, blank, reader = page.read_text().splitlines()[:3]
    assert title.startswith("# ") and blank == ""
    assert reader.startswith("For: "), "the line after the title says who the page is for"


def test_the_readme_maps_every_doc():
    mapped = {cells[0] for cells in table_rows(README, "doc")}
    for page in DOCS.glob("*.md"):
        assert f"[{page.name}](docs/{page.name})" in mapped, page.name
