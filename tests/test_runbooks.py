"""docs/runbooks.md as the on-call engineer uses it (its conventions are at its top): each
section's **Fires when:** gives the thresholds and the `for` of its alert's rule; every command
is in a block marked `sh diagnose` (reads only) or `sh act` (changes something); the native
diagnose commands run as written against a real `make run` and get no NOAUTH or error; the
compose forms resolve against the compose files; and no doc says pages go out at once, since
Alertmanager first waits group_wait."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from native.configs import render_alertmanager
from native.processes import prepare_stack
from native.settings import ROOT, StackConfig
from tests.compose_cli import BASE, CLUSTER, PASSWORDS, env_file, resolved
from tests.harness import cluster_ports_env
from tests.helpers import prometheus_rules
from tests.make_run import MakeRun, make_run_env

RUNBOOKS = ROOT / "docs" / "runbooks.md"
ALERT_RULES = ROOT / "monitoring" / "prometheus" / "rules" / "alerts.yml"
ALERTMANAGER_TEMPLATE = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml.template"
MARKS = ("diagnose", "act")  # ```sh diagnose: read-only, run by the tests; ```sh act: never run


# --- Reading the runbooks ---


@dataclass(frozen=True)
class Block:
    """A fenced block of commands, in the section (alert) it belongs to."""

    section: str
    info: str  # the fence's info string: "sh diagnose", "sh act"
    lines: tuple[str, ...]  # its commands, comments and blank lines left out

    @property
    def mark(self) -> str | None:
        words = self.info.split()
        return words[1] if words[:1] == ["sh"] and len(words) == 2 else None

    def native(self) -> list[str]:
        return [line for line in self.lines if not is_compose(line)]

    def compose(self) -> list[str]:
        return [line for line in self.lines if is_compose(line)]


def is_compose(line: str) -> bool:
    """The compose form of a command: each block gives it in lines starting with docker."""
    return line.startswith("docker ")


FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def sections(text: str) -> dict[str, str]:
    """Each `## <alert>` section's text; the part before the first is under ""."""
    parts = re.split(r"^## +(.+?)[ \t]*$", text, flags=re.M)
    found = {"": parts[0]}
    found.update(zip(parts[1::2], parts[2::2], strict=True))
    return found


def blocks(text: str) -> list[Block]:
    found = []
    for section, body in sections(text).items():
        for info, content in FENCE.findall(body):
            lines = [line.strip() for line in content.splitlines()]
            commands = tuple(line for line in lines if line and not line.startswith("#"))
            found.append(Block(section or "(top)", info.strip(), commands))
    return found


def prose(text: str) -> str:
    """The text outside the fenced blocks."""
    return FENCE.sub("", text)


TEXT = RUNBOOKS.read_text()
BLOCKS = blocks(TEXT)
DIAGNOSE = [(b.section, line) for b in BLOCKS if b.mark == "diagnose" for line in b.native()]


# --- Reading the rules ---


RULES = {rule["alert"]: rule for rule in prometheus_rules("alert")}

# A comparison with a number: `> 0.8`, `>= 10`, `< -0.05`, `> 14.4 * 0.001`, `< 0.5 * sum(...)`
# (the factor is the threshold). Label matchers (`=`, `=~`, `!~`, `!="x"`) never compare with
# a bare number, so they are not caught.
NUMBER = r"-?\d+(?:\.\d+)?"
COMPARISON = re.compile(
    rf"(==|!=|>=|<=|>|<)\s*(?:bool\s+)?({NUMBER}(?:\s*[*/]\s*{NUMBER})*)(?![\d.])"
)
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def product(expr: str) -> float:
    """The value of `14.4 * 0.001`, `2 * 3600`, `1 / 4`: numbers multiplied or divided."""
    parts = re.split(r"\s*([*/])\s*", expr)
    result = float(parts[0])
    for op, number in zip(parts[1::2], parts[2::2], strict=True):
        result = result * float(number) if op == "*" else result / float(number)
    return round(result, 9)


def thresholds(text: str) -> set[tuple[str, float]]:
    """Every (operator, number) the text compares against."""
    return {(op, product(value)) for op, value in COMPARISON.findall(text)}


def seconds(duration: str) -> float:
    """A Prometheus duration (30s, 1m, 1h30m) in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(int(n) * DURATION_UNITS[u] for n, u in parts)


def fires_when(section: str) -> str | None:
    """The **Fires when:** statement of a section, up to the next **Label:** or paragraph."""
    match = re.search(
        r"^\*\*Fires when:\*\*(.*?)(?=^\*\*[A-Z][^*]*:\*\*|\n\n|\Z)", section, re.M | re.S
    )
    return " ".join(match.group(1).split()) if match else None


# --- Fires when: the rule's thresholds and for ---


@pytest.mark.parametrize("alert", sorted(RULES))
def test_each_section_states_its_rules_thresholds_and_for(alert):
    """The numbers the section's **Fires when:** compares against (in its `code` spans) are
    exactly the numbers the rule's expression compares against, and its duration is the
    rule's `for`: a threshold or duration changed in the rule and not here fails."""
    section = sections(TEXT).get(alert)
    assert section is not None, f"docs/runbooks.md has no section ## {alert}"
    statement = fires_when(section)
    assert statement, f"{alert}: no **Fires when:** line"
    spans = re.findall(r"`([^`]+)`", statement)
    rule = RULES[alert]
    assert thresholds(" ".join(spans)) == thresholds(rule["expr"]), (
        f"{alert}: the runbook says {statement!r}; the rule is {rule['expr']!r}"
    )
    stated = re.findall(r"\bfor `([0-9a-z]+)`", statement)
    if "for" in rule:
        assert [seconds(d) for d in stated] == [seconds(rule["for"])], (
            f"{alert}: the rule's for is {rule['for']}; the runbook says {statement!r}"
        )
    else:
        assert not stated and "no `for`" in statement, f"{alert}: the rule has no for"


def test_every_section_is_an_alert():
    """A section left behind by a renamed or removed alert misleads whoever lands on it."""
    stale = set(sections(TEXT)) - set(RULES) - {""}
    assert not stale, f"sections of no alert in {ALERT_RULES.name}: {sorted(stale)}"


def test_the_threshold_reading_sees_what_rules_compare():
    """A guard on the method: the comparisons the checks above rely on are found, and
    label matchers and range windows are not taken for thresholds."""
    assert thresholds('up{job!~"app"} == 0') == {("==", 0)}
    assert thresholds("a > 14.4 * 0.001 and b > 6 * 0.001 and on() c > 0.1") == {
        (">", 0.0144),
        (">", 0.006),
        (">", 0.1),
    }
    assert thresholds("x < 0.5 * sum(increase(y[10m]))") == {("<", 0.5)}
    assert thresholds("o > 0.05 and d >= 0 or o < -0.05") == {(">", 0.05), (">=", 0), ("<", -0.05)}
    assert thresholds("time() - t > 2 * 3600") == {(">", 7200)}
    assert thresholds("predict_linear(q[5m], 30 * 60) > min_over_time(c[5m])") == set()
    assert seconds("1h30m") == 5400


# --- The commands: where they are, and how they are marked ---


def test_every_block_is_marked_diagnose_or_act():
    """Whether the tests may run a block, and the engineer may run it without a second
    thought, is said by its fence: ```sh diagnose or ```sh act."""
    assert BLOCKS, "docs/runbooks.md has no command blocks"
    unmarked = [(b.section, b.info) for b in BLOCKS if b.mark not in MARKS]
    assert not unmarked, f"fences that are not ```sh diagnose or ```sh act: {unmarked}"


def test_diagnose_commands_are_complete():
    """A diagnose command runs as written: no <placeholder> to fill in, no line continued."""
    incomplete = [
        (b.section, line)
        for b in BLOCKS
        if b.mark == "diagnose"
        for line in b.lines
        if re.search(r"<[a-z][\w -]*>", line) or line.endswith("\\")
    ]
    assert not incomplete, incomplete


# Tools whose commands need exact arguments (a port, a password, a CA file): given inline,
# nothing would run them. A bare name (`redis-cli`) is a reference, not a command.
TOOLS = {"redis-cli", "curl", "openssl", "promtool", "amtool"}


def test_no_diagnostic_command_is_left_inline():
    inline = []
    for span in re.findall(r"`([^`\n]+)`", prose(TEXT)):
        words = span.split()
        while words and re.match(r"\w+=", words[0]):  # VAR=value before the command
            words = words[1:]
        if len(words) > 1 and words[0] in TOOLS:
            inline.append(span)
    assert not inline, f"commands in the prose, never run by a test: put them in a block: {inline}"


def test_every_redis_cli_command_brings_the_password():
    """Redis has a password: a bare redis-cli gets NOAUTH (and exits 0). Natively it comes
    from make run's file, in compose from the redis container's secret file."""
    commands = [line for b in BLOCKS for line in b.lines if "redis-cli" in line]
    assert any(not is_compose(c) for c in commands) and any(is_compose(c) for c in commands)
    native_auth = 'REDISCLI_AUTH="$(cat "${STATE_DIR:-.state}/redis/password")" redis-cli '
    compose_auth = '\'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli '
    bare = [c for c in commands if (compose_auth if is_compose(c) else native_auth) not in c]
    assert not bare, bare


def test_make_commands_name_real_targets_and_components(tmp_path):
    targets = set(re.findall(r"^([a-z-]+):.*##", (ROOT / "Makefile").read_text(), re.M))
    names = set()
    for topology in ("single", "cluster"):
        cfg = StackConfig.from_env(
            {"STATE_DIR": str(tmp_path / topology), "REDIS_TOPOLOGY": topology}
        )
        names |= {p.name for p in prepare_stack(cfg)}
    wrong = []
    for b in BLOCKS:
        for line in b.lines:
            words = shlex.split(line)
            if words[0] != "make":
                continue
            if words[1] not in targets:
                wrong.append(f"{line}: no make target {words[1]}")
            for word in words[2:]:
                if word.startswith("C=") and not word.startswith("C=<") and word[2:] not in names:
                    wrong.append(f"{line}: make run has no component {word[2:]}")
    assert not wrong, wrong


# The compose forms are checked by parsing only: no Docker engine is at hand here (the engine
# tests run the same `REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli` as the
# redis services' healthcheck). Each resolves against the files it names, names services
# they have, and a script it gives `sh -c` is valid sh reading secrets its service mounts.
COMPOSE_SUBCOMMANDS = {"exec", "kill", "logs", "ps", "restart", "up"}
OPTIONS_WITH_VALUES = {"--tail", "-f", "--file", "--scale", "--profile", "-s"}


def test_compose_forms_resolve_against_the_compose_files(tmp_path):
    env = env_file(tmp_path, **PASSWORDS)
    models: dict[tuple[Path, ...], dict] = {}
    wrong = []
    commands = [(b, line) for b in BLOCKS for line in b.compose()]
    assert commands
    for block, line in commands:
        words = shlex.split(line)
        if words[1] != "compose":
            continue  # docker system df: the engine's, not compose's
        files: list[Path] = []
        words = words[2:]
        while words[0].startswith("-"):
            assert words[0] in ("-f", "--file"), line
            files.append(ROOT / words[1])
            words = words[2:]
        key = tuple(files) or (BASE,)
        assert set(key) <= {BASE, CLUSTER}, line
        if key not in models:
            models[key] = resolved(key, env=env)
        services = models[key]["services"]
        subcommand, args = words[0], words[1:]
        if subcommand not in COMPOSE_SUBCOMMANDS:
            wrong.append(f"{line}: unexpected subcommand {subcommand}")
            continue
        named, i = [], 0
        while i < len(args):
            if args[i] in OPTIONS_WITH_VALUES:
                i += 2
                continue
            if not args[i].startswith("-"):
                named.append(args[i])
                if subcommand == "exec":
                    break  # the rest is the command run in the container
            i += 1
        for name in named:
            if not name.startswith("<") and name not in services:
                wrong.append(f"{line}: no service {name} in {[f.name for f in key]}")
        if subcommand == "exec":
            wrong += exec_problems(line, args[i + 1 :], services[named[0]], block)
    assert not wrong, wrong


def exec_problems(line: str, command: list[str], service: dict, block: Block) -> list[str]:
    """What is wrong with `docker compose exec <service> sh -c '<script>'`."""
    if command[:2] != ["sh", "-c"]:
        return []
    script = command[2]
    problems = []
    syntax = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    if syntax.returncode != 0:
        problems.append(f"{line}: {syntax.stderr}")
    mounted = {s["source"] for s in service.get("secrets", [])}
    for secret in re.findall(r"/run/secrets/(\w+)", script):
        if secret not in mounted:
            problems.append(f"{line}: the service has no secret {secret}")
    # The same Redis command as the block's native form.
    if "redis-cli" in script:
        natives = {redis_command(n) for n in block.native() if "redis-cli" in n}
        if redis_command(script) not in natives:
            problems.append(f"{line}: no native form of it in its block")
    return problems


def redis_command(line: str) -> tuple[str, ...]:
    """The Redis command of a redis-cli line (`info memory`, `--cluster check`)."""
    words = shlex.split(line.partition("redis-cli")[2])
    if words[:1] == ["-p"]:
        words = words[2:]
    return tuple(words[:2])


# --- Pages wait for group_wait ---


def group_wait_of_pages(tmp_path: Path) -> str:
    """The group_wait Alertmanager applies to pages (severity critical) by default: the
    template filled in as make run fills it (compose gives the same default, a test in
    tests/test_docs.py checks)."""
    cfg = StackConfig.from_env({"STATE_DIR": str(tmp_path)})
    route = yaml.safe_load(render_alertmanager(cfg).read_text())["route"]
    (pages,) = [r for r in route["routes"] if r["matchers"] == ['severity="critical"']]
    return str(pages.get("group_wait", route["group_wait"]))


# "pages the on-call engineer now", "Pages: sent at once", "pages go out immediately".
AT_ONCE = re.compile(
    r"\bpages?:?(?: (?:the on-call engineer|someone|go out|goes out|are sent|is sent|sent))?"
    r" (?:now|at once|immediately|right away)\b",
    re.I,
)


def test_no_doc_says_pages_go_out_at_once():
    pages = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ALERTMANAGER_TEMPLATE,
        ROOT / "monitoring" / "prometheus" / "rules" / "alerts.yml",
    ]
    claims = [
        f"{path.name}: {match.group(0)}"
        for path in pages
        for match in AT_ONCE.finditer(" ".join(path.read_text().split()))
    ]
    assert not claims, claims


@pytest.mark.parametrize("page", ["runbooks.md", "observability.md"])
def test_the_severities_say_pages_wait_for_group_wait(tmp_path, page):
    """Where the severities are defined, pages are said to go out after group_wait, with
    its value."""
    value = group_wait_of_pages(tmp_path)
    paragraphs = re.split(r"\n\s*\n", (ROOT / "docs" / page).read_text())
    stated = [p for p in paragraphs if "group_wait" in p and "critical" in p]
    assert stated, f"{page}: no paragraph on pages (critical) and group_wait"
    assert all(f"`{value}`" in p for p in stated), f"{page}: group_wait is `{value}`"


# --- The diagnose commands, run ---


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    """`make run` as shipped, on free ports, in the cluster topology: every diagnose command
    works there (the single Redis's commands on node 1, and the cluster's own), and `make
    status` and the logs under .state/logs exist only under make run's supervisor."""
    state = tmp_path_factory.mktemp("runbooks") / "state"
    env = make_run_env(state, REDIS_TOPOLOGY="cluster", **cluster_ports_env())
    run = MakeRun(state_dir=state, env=env)
    try:
        run.start()
        yield run
        run.signal_stop(signal.SIGINT)
    finally:
        run.kill()


# What a failed command prints though it may exit 0 (redis-cli does on NOAUTH and ERR).
FAILURE = re.compile(
    r"NOAUTH|WRONGPASS|^ERR |^\(error\)|\[ERR\]|Could not connect|Connection refused"
    r"|command not found|No such file|Permission denied|^[Ee]rror",
    re.M,
)
SETTLE_SECONDS = 60  # a stack just started: mtail, Prometheus and the exporters catch up


def run_command(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The command as the engineer's shell runs it, from the repository folder; pipefail:
    a grep that finds nothing in a pipe fails it."""
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", line],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_runbooks_have_diagnose_commands_for_redis_and_the_tools():
    """The run below is not vacuous: Redis, curl, promtool, amtool and make status are there."""
    tools = {word for _, line in DIAGNOSE for word in shlex.split(line)}
    assert {"redis-cli", "curl", "promtool", "amtool", "make"} <= tools


@pytest.mark.stack
@pytest.mark.parametrize(
    ("section", "line"), DIAGNOSE, ids=[f"{s}:{i}" for i, (s, _) in enumerate(DIAGNOSE)]
)
def test_each_diagnose_command_runs_on_a_real_make_run(running, section, line):
    """With the environment the runbook tells the engineer to set (make run's STATE_DIR and
    ports), from the repository folder: exit 0, and no NOAUTH or error in what it prints."""
    env = {**os.environ, **running.env}
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        out = run_command(line, env)
        failed = out.returncode != 0 or FAILURE.search(out.stdout + out.stderr)
        if not failed or time.monotonic() > deadline or "NOAUTH" in out.stdout + out.stderr:
            break
        time.sleep(1)
    assert not failed, (
        f"{section}: {line}\nexit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    )
