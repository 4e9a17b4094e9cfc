"""`make backup`, `make restore` and `make migrate`: the native stack's messages, kept and moved.

    python -m native.backup backup [FILE]          what the running make run stores, into FILE
    python -m native.backup restore FILE [--force] a backup into the running make run's store
    python -m native.backup migrate single|cluster [FILE]  the other topology's messages
                            into the running make run, which must be of this topology,
                            through a backup file (FILE; by default in backups/), kept

Each acts on the make run that serves from STATE_DIR and REDIS_PORT, whichever topology it
runs (asked of Redis itself); the file format and its checks are service/backup.py's.

Migrate copies from the other topology's data folders, at rest: the two topologies cannot
serve at once (the single Redis and cluster node 1 share REDIS_PORT, and make run holds the
state folder), so the target's make run serves new writes while each of the source's Redis
folders is opened by a redis-server of its own on a free port, read, and stopped again.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import redis
from mirakuru import TCPExecutor
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from native.ports import free_port
from native.processes import app_env
from native.redis_files import redis_auth_config, redis_data_dir, redis_instance_config
from native.settings import CLUSTER_NODES, REDIS_TOPOLOGIES, ROOT, StackConfig
from service import backup as store_backup
from service.config import Settings
from service.redis_clients import RedisClient

BACKUPS = ROOT / "backups"  # beside the repository's files, not in STATE_DIR: `make clean`
LOAD_TIMEOUT = 300  # seconds for a source Redis to load its data


def running_topology(cfg: StackConfig) -> str:
    """The topology of the make run serving on REDIS_PORT, as its Redis says."""
    password = (
        cfg.redis_password_file.read_text().strip() if cfg.redis_password_file.exists() else None
    )
    node = redis.Redis(
        host="127.0.0.1", port=cfg.ports["redis"], password=password, socket_connect_timeout=2
    )
    try:
        enabled = node.info("cluster").get("cluster_enabled")
    except redis.RedisError as exc:
        raise store_backup.BackupError(
            f"no Redis of a make run answers on 127.0.0.1:{cfg.ports['redis']} "
            f"({type(exc).__name__}: {exc}). Start `make run` first (REDIS_TOPOLOGY=cluster "
            "for the cluster)."
        ) from exc
    finally:
        node.close()
    return "cluster" if enabled else "single"


def stack_client(cfg: StackConfig) -> RedisClient:
    """A client of the running make run's store, reached as its app reaches it."""
    cfg = replace(cfg, redis_topology=running_topology(cfg))
    return store_backup.connect(Settings.from_env(app_env(cfg)))


def source_folders(cfg: StackConfig) -> list[Path]:
    """The data folders of topology cfg.redis_topology that hold data: the single Redis's,
    or each cluster node's (replicas too: a message is copied once, whichever has it)."""
    names = (
        ["redis"]
        if cfg.redis_topology == "single"
        else ["redis"] + [f"redis-{n}" for n in range(2, CLUSTER_NODES + 1)]
    )
    folders = [redis_data_dir(cfg, name) for name in names]
    return [f for f in folders if (f / "appendonlydir").is_dir() or (f / "dump.rdb").exists()]


@contextmanager
def opened(cfg: StackConfig, folders: list[Path]) -> Iterator[list[RedisClient]]:
    """A standalone redis-server on each data folder (a cluster node's too: its keys load
    the same), on free ports, with no snapshot on stop; clients of them, once loaded."""
    auth = redis_auth_config(cfg)
    password = cfg.redis_password_file.read_text().strip()
    logs = cfg.state_dir / "logs" / "migrate"
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        clients: list[RedisClient] = []
        for folder in folders:
            port = free_port()
            argv = [
                "redis-server",
                str(redis_instance_config(folder)),
                *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)),
                *("--include", str(auth), "--save", ""),
            ]
            log = stack.enter_context((logs / f"{folder.name}.log").open("ab"))
            server = TCPExecutor(argv, host="127.0.0.1", port=port, stdout=log, timeout=60)
            stack.callback(server.stop)
            server.start()
            client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=60)
            stack.callback(client.close)
            # It answers LOADING until its whole AOF is read.
            Retrying(
                stop=stop_after_delay(LOAD_TIMEOUT),
                wait=wait_fixed(0.2),
                retry=retry_if_exception_type(redis.BusyLoadingError),
                reraise=True,
            )(client.ping)
            clients.append(client)
        yield clients


def stamp() -> str:
    """Now, for file names."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def migrate(cfg: StackConfig, to: str, copy: str | None = None) -> str:
    """Copy the other topology's messages into the running make run of topology `to`,
    through a backup file (`copy`, kept); check each one there; say what was done."""
    running = running_topology(cfg)
    if running != to:
        raise store_backup.BackupError(
            f"the make run serving on 127.0.0.1:{cfg.ports['redis']} runs the {running} "
            f"topology, not {to}. Stop it, start the target (REDIS_TOPOLOGY={to} make run for "
            "the cluster, plain make run for single), then migrate."
        )
    source = replace(cfg, redis_topology="cluster" if to == "single" else "single")
    folders = source_folders(source)
    if not folders:
        return f"nothing to migrate: the {source.redis_topology} topology has no data"
    path = Path(copy or BACKUPS / f"migrate-from-{source.redis_topology}-{stamp()}.backup")
    started = time.monotonic()
    with opened(source, folders) as clients:
        copied = store_backup.backup(clients, str(path))
    with path.open("rb") as src:
        done = store_backup.restore(stack_client(cfg), src, force=True)
    where = ", ".join(str(f.relative_to(cfg.state_dir)) for f in folders)
    return (
        f"from the {source.redis_topology} topology ({where} in {cfg.state_dir}) into the "
        f"running {to}: {store_backup.describe_restore(done, time.monotonic() - started)}. "
        f"The copy is kept in {path}"
        + (f"; {copied.skipped} keys skipped (see above)" if copied.skipped else "")
    )


def main(argv: list[str] | None = None) -> int:
    """make backup, make restore, make migrate."""
    parser = argparse.ArgumentParser(prog="python -m native.backup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backup").add_argument("file", nargs="?")
    restore_parser = sub.add_parser("restore")
    restore_parser.add_argument("file", nargs="?")
    restore_parser.add_argument("--force", action="store_true")
    migrate_parser = sub.add_parser("migrate")
    migrate_parser.add_argument("to", nargs="?")
    migrate_parser.add_argument("file", nargs="?")
    args = parser.parse_args(argv)
    cfg = StackConfig.from_env()
    started = time.monotonic()
    try:
        if args.command == "backup":
            path = args.file or str(BACKUPS / f"messages-{stamp()}.backup")
            summary = store_backup.backup([stack_client(cfg)], path)
            took = time.monotonic() - started
            print(f"backup: {store_backup.describe(summary)} in {path} ({took:.1f} s)")
        elif args.command == "restore":
            if not args.file:
                raise store_backup.BackupError("which backup? make restore FILE=...")
            with store_backup.open_backup(args.file) as src:
                done = store_backup.restore(stack_client(cfg), src, args.force)
            took = time.monotonic() - started
            print(f"restore: {store_backup.describe_restore(done, took)}")
        else:
            if args.to not in REDIS_TOPOLOGIES:
                raise store_backup.BackupError(
                    f"into which topology? make migrate TO=<{'|'.join(REDIS_TOPOLOGIES)}>"
                )
            print(f"migrate: {migrate(cfg, args.to, args.file)}")
    except store_backup.BackupError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"{args.command}: Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
