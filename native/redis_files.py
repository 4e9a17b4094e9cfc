"""Redis's files in the state folder: each instance's config and data, and the password.

The password is made once and kept with the data; Redis reads it from a config file of its
own, so that it never appears on a command line.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from native.settings import ROOT, StackConfig

SHARED_CONFIG = ROOT / "redis" / "redis.conf"


def redis_data_dir(cfg: StackConfig, name: str = "redis") -> Path:
    """Where a Redis instance keeps its data. Each topology has folders of its own, so that
    switching between them never mixes (or loses) what either stored."""
    if cfg.redis_topology == "single":
        return cfg.state_dir / name
    return cfg.state_dir / "redis-cluster" / name


def redis_instance_config(folder: Path, *lines: str) -> Path:
    """A config file of this Redis instance's own, including the shared redis/redis.conf:
    Redis rewrites its config file on CONFIG REWRITE (Sentinel does so on failover), and
    that must never be the repository's file."""
    conf = folder / "redis-instance.conf"
    conf.write_text("\n".join([f"include {SHARED_CONFIG}", *lines]) + "\n")
    return conf


def redis_password(cfg: StackConfig) -> str:
    """The native stack's Redis password, made on first use, readable by this user only."""
    cfg.redis_password_file.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.redis_password_file.exists():
        cfg.redis_password_file.touch(mode=0o600)
        cfg.redis_password_file.write_text(secrets.token_urlsafe(32) + "\n")
    return cfg.redis_password_file.read_text().strip()


def redis_auth_config(cfg: StackConfig) -> Path:
    """A config file that sets the password, for every instance to include."""
    password = redis_password(cfg)  # made first, with its folder
    auth = cfg.redis_password_file.parent / "auth.conf"
    auth.touch(mode=0o600)
    # masterauth: a replica (cluster topology) logs in to its master with the same password.
    auth.write_text(f"requirepass {password}\nmasterauth {password}\n")
    return auth
