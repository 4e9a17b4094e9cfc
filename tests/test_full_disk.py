"""A full disk under Redis: its data folder on a small tmpfs made for the test, filled with a
file. Writes answer a JSON 503 and never a 201 for a message that is not in the AOF on disk;
reads go on; once the file is gone, writes come back by themselves, and every acknowledged
message is still there after Redis restarts from its AOF. Mounting needs root (the tests
run as root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from native.ports import free_port
from service.app import create_app
from tests.harness import CERT, redis_executor
from tests.helpers import prometheus_query, sha256
from tests.make_run import MakeRun, make_run_env, until
from tests.metrics_text import value
from tests.test_metrics import scrape

CANNOT_SAVE = {"err_msg": "Store cannot save messages right now, try again later"}
# Bigger than a page (4 KiB): no message fits in what the AOF's last page has left.
BODY = "m" * 8000


@contextlib.contextmanager
def small_filesystem(size: str, at: Path | None = None) -> Iterator[Path]:
    """A tmpfs of the given size mounted on `at` (or a new temporary folder), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = at or Path(tempfile.mkdtemp(prefix="full-disk-"))
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        if at is None:
            folder.rmdir()


def fill(folder: Path) -> Path:
    """A file that takes every byte left on the folder's filesystem."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):  # ENOSPC: on to smaller chunks
                while True:
                    f.write(b"\0" * chunk)
    return filler


def in_aof(folder: Path, digest: str) -> bool:
    """The message's key is in the AOF files on disk (not just in Redis's memory)."""
    key = f"msg:{digest}".encode()
    return any(key in path.read_bytes() for path in folder.glob("appendonlydir/*.aof"))


def test_a_full_disk_refuses_writes_with_503_keeps_reads_and_recovers(tmp_path):
    with small_filesystem("2m") as data:
        # The log and config stay outside: only the data folder fills.
        redis = redis_executor(tmp_path, free_port(), "--dir", str(data))
        redis.start()
        app = create_app({"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"})
        client = app.test_client()
        try:
            acked = {}
            for i in range(5):
                message = f"before {i} {BODY}"
                assert client.post("/messages", json={"message": message}).status_code == 201
                acked[sha256(message)] = message

            filler = fill(data)
            refused = []
            for i in range(10):
                message = f"full {i} {BODY}"
                r = client.post("/messages", json={"message": message})
                assert r.status_code in (201, 503), r.get_json()
                if r.status_code == 201:  # there was room after all
                    acked[sha256(message)] = message
                    continue
                assert r.get_json() == CANNOT_SAVE
                assert r.headers["Retry-After"] == "10"
                refused.append(message)
            assert refused, "no write was refused on a full disk"
            # The promise: a 201 only for what Redis has written to its file.
            assert [d for d in acked if not in_aof(data, d)] == []
            # Reads go on, and the instance stays ready.
            for digest, message in acked.items():
                assert client.get(f"/messages/{digest}").get_json() == {"message": message}
            assert client.get(f"/messages/{'0' * 64}").status_code == 404
            assert client.get("/readyz").status_code == 200
            text = scrape(app)
            assert value(text, "messages_redis_errors_total", command="SET", kind="persistence")
            assert value(text, "messages_redis_errors_total", command="SET", kind="other") == 0

            filler.unlink()
            message = f"after {BODY}"
            took = until(
                lambda: client.post("/messages", json={"message": message}).status_code == 201, 5
            )
            print(f"\nwrites back {took:.2f} s after the space was freed")
            acked[sha256(message)] = message
            for message in refused:  # the client's retry
                assert client.post("/messages", json={"message": message}).status_code == 201
                acked[sha256(message)] = message

            redis.kill()  # SIGKILL: what survives is what the AOF holds
            redis.start()
            for digest, message in acked.items():
                assert client.get(f"/messages/{digest}").get_json() == {"message": message}
        finally:
            app.extensions["message_store"].close()
            # On a full disk Redis refuses to stop: its final RDB save fails.
            with contextlib.suppress(FileNotFoundError):
                (data / "filler").unlink()
            redis.stop()


def firing(run: MakeRun, alertname: str) -> bool:
    address = f"127.0.0.1:{run.port('PROMETHEUS')}"
    expr = f'ALERTS{{alertname="{alertname}",alertstate="firing"}}'
    return bool(prometheus_query(address, expr)["data"]["result"])


def post(run: MakeRun, message: str) -> requests.Response:
    return requests.post(run.url + "/messages", json={"message": message}, verify=CERT, timeout=10)


def get(run: MakeRun, digest: str) -> requests.Response:
    return requests.get(f"{run.url}/messages/{digest}", verify=CERT, timeout=10)


@pytest.mark.stack
def test_make_run_on_a_full_disk_pages_and_recovers(tmp_path):
    """make run as shipped (but a 1 s scrape), Redis's folder on a small tmpfs: through the
    edge, a JSON 503 and reads on; RedisPersistenceFailing fires in Prometheus within its
    `for` (1m) and a few scrapes; writes resume once there is room."""
    state = tmp_path / "state"
    with small_filesystem("4m", at=state / "redis") as data:
        run = MakeRun(state_dir=state, env=make_run_env(state, SCRAPE_INTERVAL="1s"))
        try:
            run.start()
            acked = [f"before {BODY}"]
            assert post(run, acked[0]).status_code == 201
            filler = fill(data)
            full = time.monotonic()
            refused = []
            for i in range(5):
                message = f"full {i} {BODY}"
                r = post(run, message)
                assert r.status_code in (201, 503), r.text
                (acked if r.status_code == 201 else refused).append(message)
                if r.status_code == 503:
                    assert r.json() == CANNOT_SAVE
            assert refused, "no write was refused on a full disk"
            assert get(run, sha256(acked[0])).json() == {"message": acked[0]}

            # Its `for` (1m), then a scrape and an evaluation (1 s each here).
            until(lambda: firing(run, "RedisPersistenceFailing"), 75, every=1)
            took = time.monotonic() - full
            print(f"\nRedisPersistenceFailing firing {took:.0f} s after the disk filled")

            filler.unlink()
            until(lambda: post(run, f"after {BODY}").status_code == 201, 5)
            until(lambda: not firing(run, "RedisPersistenceFailing"), 30, every=1)
            for message in acked:
                assert get(run, sha256(message)).json() == {"message": message}
        finally:
            # Before the unmount, and with room: on a full disk Redis refuses to stop (its
            # final RDB save fails) until the supervisor kills it.
            with contextlib.suppress(FileNotFoundError):
                (data / "filler").unlink()
            run.kill()
