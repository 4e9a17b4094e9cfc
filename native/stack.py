"""What the native stack runs: each process's command line and its rendered config files.

Used by `make run` (native/run.py, under honcho) and by the tests (under mirakuru), so both
start exactly the same processes from the same config files as docker compose.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "nginx" / "nginx.conf.template"
NGINX_TEMPLATE_VARS = (
    "EDGE_LISTEN", "APP_UPSTREAM", "TLS_CERT", "TLS_KEY", "NGINX_RUN_DIR", "NGINX_USER",
    "MAX_BODY_BYTES", "RATE_LIMIT_RPS", "RATE_LIMIT_BURST",
)  # fmt: skip


@dataclass(frozen=True)
class StackConfig:
    """Ports, folders and edge limits of one native stack, from the environment."""

    state_dir: Path
    edge_port: int = 5000
    app_port: int = 8000
    redis_port: int = 6379
    rate_limit_rps: int = 100
    rate_limit_burst: int = 200
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        """Read EDGE_PORT, APP_PORT, REDIS_PORT, STATE_DIR and RATE_LIMIT_* (all optional)."""
        env = dict(os.environ if env is None else env)
        d = cls(state_dir=ROOT / ".state")
        return cls(
            state_dir=Path(env.get("STATE_DIR") or d.state_dir).resolve(),
            edge_port=int(env.get("EDGE_PORT") or d.edge_port),
            app_port=int(env.get("APP_PORT") or d.app_port),
            redis_port=int(env.get("REDIS_PORT") or d.redis_port),
            rate_limit_rps=int(env.get("RATE_LIMIT_RPS") or d.rate_limit_rps),
            rate_limit_burst=int(env.get("RATE_LIMIT_BURST") or d.rate_limit_burst),
            env=env,
        )

    @property
    def app_settings(self) -> Settings:
        """The app's settings as the app process will read them."""
        return Settings.from_env(self.app_env)

    @property
    def app_env(self) -> dict[str, str]:
        """The app process's environment: the caller's, pointed at this stack's Redis."""
        return {
            **self.env,
            "APP_BIND": f"127.0.0.1:{self.app_port}",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "PYTHONUNBUFFERED": "1",
        }


@dataclass(frozen=True)
class Process:
    """One long-running process of the stack and how to tell that it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str | None = None  # HTTP path answering 200 when ready; None: port open


def nginx_values(cfg: StackConfig) -> dict[str, str]:
    """The values of the nginx template's variables for this stack."""
    return {
        "EDGE_LISTEN": f"127.0.0.1:{cfg.edge_port}",
        "APP_UPSTREAM": f"127.0.0.1:{cfg.app_port}",
        "TLS_CERT": str(ROOT / "localhost.crt"),
        "TLS_KEY": str(ROOT / "nginx" / "localhost.key"),
        "NGINX_RUN_DIR": str(cfg.state_dir / "nginx"),
        # Natively every process runs as whoever ran the stack; nginx would otherwise switch
        # its workers to "nobody", who may not reach a state folder under a private home.
        "NGINX_USER": pwd.getpwuid(os.geteuid()).pw_name,
        "MAX_BODY_BYTES": str(cfg.app_settings.max_body_bytes),
        "RATE_LIMIT_RPS": str(cfg.rate_limit_rps),
        "RATE_LIMIT_BURST": str(cfg.rate_limit_burst),
    }


def render_nginx(cfg: StackConfig) -> Path:
    """Fill in the shared nginx template with envsubst, as the nginx image does in compose."""
    run_dir = cfg.state_dir / "nginx"
    run_dir.mkdir(parents=True, exist_ok=True)
    only_ours = " ".join(f"${{{name}}}" for name in NGINX_TEMPLATE_VARS)
    rendered = subprocess.run(
        ["envsubst", only_ours],
        input=NGINX_TEMPLATE.read_text(),
        env={**os.environ, **nginx_values(cfg)},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    conf = run_dir / "nginx.conf"
    conf.write_text(rendered)
    return conf


def processes(cfg: StackConfig) -> list[Process]:
    """Prepare the state folder and config files; return the processes to start, in order."""
    redis_dir = cfg.state_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    nginx_conf = render_nginx(cfg)
    return [
        Process(
            name="redis",
            argv=["redis-server", str(ROOT / "redis" / "redis.conf"),
                  "--bind", "127.0.0.1", "--port", str(cfg.redis_port),
                  "--dir", str(redis_dir)],
            env=dict(cfg.env),
            port=cfg.redis_port,
        ),
        Process(
            name="app",
            argv=[sys.executable, "-m", "gunicorn",
                  "--config", str(ROOT / "service" / "gunicorn.conf.py"),
                  "--chdir", str(ROOT), "service.wsgi:app"],
            env=cfg.app_env,
            port=cfg.app_port,
            ready_path="/healthz",
        ),
        Process(
            name="nginx",
            argv=["nginx", "-p", str(nginx_conf.parent), "-c", str(nginx_conf),
                  "-e", "stderr"],
            env=dict(cfg.env),
            port=cfg.edge_port,
        ),
    ]  # fmt: skip
