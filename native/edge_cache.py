"""nginx's message cache: in shared memory (tmpfs) when there is one, because writing a new
entry to disk cost nginx 150-500 µs of CPU per first read here (ext4), a third of that in
tmpfs (docs/performance.md). Bounded by EDGE_CACHE_MAX_SIZE; removed when make run stops
(the messages stay in Redis). One folder per state folder."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from native.settings import StackConfig

SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 (ours only: see own_edge_cache_dir)


def edge_cache_dir(cfg: StackConfig) -> Path:
    """The cache's folder: in /dev/shm if this user may write there, else in the state
    folder."""
    if not os.access(SHARED_MEMORY, os.W_OK):
        return cfg.state_dir / "nginx" / "cache"
    tag = hashlib.sha256(str(cfg.state_dir).encode()).hexdigest()[:16]
    return SHARED_MEMORY / f"message-service-edge-cache-{tag}"


def own_edge_cache_dir(cfg: StackConfig) -> None:
    """Make the cache folder, ours alone: /dev/shm is shared, and a folder another user made
    there in advance (the name is predictable) must not receive our messages."""
    folder = edge_cache_dir(cfg)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.geteuid():
        raise RuntimeError(f"{folder} is not this user's own folder: remove it")
    folder.chmod(0o700)


def remove_edge_cache(cfg: StackConfig) -> None:
    """Free the memory the edge's cache holds (nginx has stopped)."""
    shutil.rmtree(edge_cache_dir(cfg), ignore_errors=True)
