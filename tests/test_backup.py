"""Backups and moves between topologies lose nothing: `python -m service.backup` on a real
redis-server (every message back byte-identical after a wipe; a corrupted or truncated backup
refused with nothing changed; a store that is not empty refused unless forced; a backup taken
under writes holds every message stored before it began), then `make backup`, `make restore`
and `make migrate` on real `make run`s, single Redis and cluster, both ways."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from redis.cluster import RedisCluster

from native.settings import ROOT
from service.backup import main as backup_main
from service.store import KEY_PREFIX, digest_of
from tests.harness import CERT, cluster_ports_env
from tests.make_run import MakeRun, make_run_env

# Messages as the API stores them: text of every kind, empty, large, with line breaks (the
# format's own separator) and the footer's own words.
SAMPLES = [
    "",
    "foo",
    "line one\nline two\n",
    "end 1 " + "0" * 64 + "\n",
    "ünïcødé ✓ 𝄞",
    "x" * 200_000,
]


def messages(n: int, tag: str = "m") -> dict[str, bytes]:
    """digest -> UTF-8 bytes of the samples and n numbered messages."""
    texts = [*SAMPLES, *(f"{tag} {i}\n{'·' * (i % 50)}" for i in range(n))]
    return {digest_of(t.encode()): t.encode() for t in texts}


def store(r: redis.Redis, data: dict[str, bytes]) -> None:
    """As the app stores them (service/store.py)."""
    for digest, value in data.items():
        r.set(KEY_PREFIX + digest, value, nx=True)


def contents(r: redis.Redis) -> dict[bytes, bytes]:
    """Every key and its value."""
    return {k: r.get(k) for k in r.scan_iter(count=1000)}


@dataclass
class Result:
    returncode: int
    stderr: str


@pytest.fixture
def backup_tool(redis_url, monkeypatch, capsys):
    """service.backup's main in this process (a process each would take a second), reaching
    the shared redis-server as the app does: through REDIS_URL."""
    monkeypatch.setenv("REDIS_URL", redis_url)

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = backup_main(list(args))
        return Result(code, capsys.readouterr().err)

    return run


def process(redis_url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """python -m service.backup as a process of its own, reaching Redis as the app does."""
    return subprocess.run(
        [sys.executable, "-m", "service.backup", *args],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_backup_wipe_restore_brings_every_message_back_byte_identical(
    redis_url, tmp_path, backup_tool
):
    r = redis.Redis.from_url(redis_url)
    data = messages(500)
    store(r, data)
    before = contents(r)
    path = tmp_path / "messages.backup"

    made = backup_tool("backup", str(path))
    assert made.returncode == 0, made.stderr
    body, footer = path.read_bytes().rsplit(b"end ", 1)
    count, checksum = footer.decode().split()
    assert int(count) == len(data)
    assert checksum == hashlib.sha256(body).hexdigest()
    assert f"{len(data)} messages" in made.stderr
    assert checksum in made.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["messages.backup"]  # no partial file left

    r.flushall()
    done = backup_tool("restore", str(path))
    assert done.returncode == 0, done.stderr
    assert f"{len(data)} written" in done.stderr
    assert contents(r) == before


def test_backup_to_stdout_and_restore_from_stdin(redis_url):
    """The compose form: `docker compose run -T app python -m service.backup backup -`."""
    r = redis.Redis.from_url(redis_url)
    store(r, messages(50))
    before = contents(r)
    made = process(redis_url, "backup", "-")
    assert made.returncode == 0, made.stderr
    r.flushall()
    done = process(redis_url, "restore", "-", stdin=made.stdout)
    assert done.returncode == 0, done.stderr
    assert contents(r) == before


def corruptions(good: bytes) -> dict[str, tuple[bytes, str]]:
    """Ways a backup goes bad, each with the words its refusal must contain."""
    first_value = good.index(b"foo")
    header_end = good.index(b"\n") + 1
    line_end = good.index(b"\n", header_end) + 1
    first_record_end = line_end + int(good[header_end:line_end].split()[1]) + 1
    records_end = good.rindex(b"end ")
    return {
        "a byte of a message changed": (
            good[:first_value] + b"g" + good[first_value + 1 :],
            "does not match its digest",
        ),
        "truncated mid-record": (good[: len(good) // 2], "truncated"),
        "truncated before its last line": (good[:records_end], "incomplete"),
        "truncated inside its last line": (good[:-10], "truncated"),
        "empty": (b"", "not a message-service backup"),
        "a record taken out": (
            good[:header_end] + good[first_record_end:],
            "the file holds",
        ),
        "its checksum changed": (
            good[:-2] + (b"0" if good[-2:-1] != b"0" else b"1") + b"\n",
            "checksum",
        ),
        "something after the end": (good + b"more", "more after the last line"),
    }


@pytest.mark.parametrize("force", [False, True])
def test_a_corrupted_or_truncated_backup_is_refused_and_nothing_changes(
    redis_url, tmp_path, backup_tool, force
):
    r = redis.Redis.from_url(redis_url)
    store(r, messages(20))
    path = tmp_path / "good.backup"
    assert backup_tool("backup", str(path)).returncode == 0
    good = path.read_bytes()
    r.flushall()
    if force:  # a store that is not empty, restored into with --force
        store(r, messages(3, tag="already there"))
    before = contents(r)
    for what, (bad, words) in corruptions(good).items():
        (tmp_path / "bad.backup").write_bytes(bad)
        args = ["restore", str(tmp_path / "bad.backup"), *(["--force"] if force else [])]
        refused = backup_tool(*args)
        assert refused.returncode == 1, what
        assert words in refused.stderr, (what, refused.stderr)
        assert contents(r) == before, what


def test_a_store_that_is_not_empty_is_refused_unless_forced(redis_url, tmp_path, backup_tool):
    r = redis.Redis.from_url(redis_url)
    store(r, messages(10))
    path = tmp_path / "messages.backup"
    assert backup_tool("backup", str(path)).returncode == 0
    r.flushall()
    other = messages(5, tag="written since")
    store(r, other)
    before = contents(r)
    refused = backup_tool("restore", str(path))
    assert refused.returncode == 1
    assert "not empty" in refused.stderr and "FORCE=1" in refused.stderr
    assert contents(r) == before
    merged = backup_tool("restore", str(path), "--force")
    assert merged.returncode == 0, merged.stderr
    after = contents(r)
    assert len(after) == len(set(messages(10)) | set(other))
    assert all(after[KEY_PREFIX.encode() + d.encode()] == v for d, v in other.items())


def test_a_key_that_is_not_its_message_is_reported_and_left_out(redis_url, tmp_path, backup_tool):
    r = redis.Redis.from_url(redis_url)
    store(r, messages(3))
    r.set(f"{KEY_PREFIX}{'e' * 64}", b"\xff")  # only a bug or tampering does this
    made = backup_tool("backup", str(tmp_path / "b"))
    assert made.returncode == 0
    assert f"skipped {KEY_PREFIX}{'e' * 64}" in made.stderr
    assert "1 keys skipped" in made.stderr
    assert b"e" * 64 not in (tmp_path / "b").read_bytes()


def test_a_backup_taken_under_writes_holds_every_message_stored_before_it(
    redis_url, tmp_path, backup_tool
):
    """Messages are never changed or deleted, so SCAN sees every one stored before it began;
    those written meanwhile may or may not be in it, each whole."""
    r = redis.Redis.from_url(redis_url)
    before = messages(3000)
    store(r, before)
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            text = f"during {i}".encode()
            r.set(KEY_PREFIX + digest_of(text), text, nx=True)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        made = backup_tool("backup", str(tmp_path / "b"))
    finally:
        stop.set()
        writer.join()
    assert made.returncode == 0, made.stderr
    r.flushall()
    assert backup_tool("restore", str(tmp_path / "b")).returncode == 0
    restored = contents(r)
    assert all(restored[KEY_PREFIX.encode() + d.encode()] == v for d, v in before.items())


# --- make backup, make restore, make migrate on real make runs ---


def post_all(run: MakeRun, texts: list[str]) -> dict[str, str]:
    session = requests.Session()
    stored = {}
    for text in texts:
        r = session.post(run.url + "/messages", json={"message": text}, verify=CERT, timeout=10)
        assert r.status_code == 201, r.text
        stored[r.json()["digest"]] = text
    return stored


def unreadable(run: MakeRun, stored: dict[str, str]) -> list[str]:
    """The digests the API does not answer with their message."""
    session = requests.Session()
    wrong = []
    for digest, text in stored.items():
        r = session.get(f"{run.url}/messages/{digest}", verify=CERT, timeout=10)
        if r.status_code != 200 or r.json() != {"message": text}:
            wrong.append(digest)
    return wrong


def store_client(run: MakeRun) -> redis.Redis | RedisCluster:
    cfg = run.settings
    password = cfg.redis_password_file.read_text().strip()
    if cfg.redis_topology == "cluster":
        return RedisCluster(host="127.0.0.1", port=cfg.ports["redis"], password=password)
    return redis.Redis(host="127.0.0.1", port=cfg.ports["redis"], password=password)


def in_store(run: MakeRun, stored: dict[str, str]) -> bool:
    """Every message in Redis, byte-identical (the edge's cache cannot answer for it)."""
    client = store_client(run)
    try:
        return all(client.get(KEY_PREFIX + d) == t.encode() for d, t in stored.items())
    finally:
        client.close()


def backup_wipe_restore(run: MakeRun, stored: dict[str, str], path: Path) -> None:
    made = run.tool("backup", f"FILE={path}")
    assert made.returncode == 0, made.stderr
    assert f"{len(stored)} messages" in made.stdout
    client = store_client(run)
    client.flushall()  # every master of a cluster
    assert client.dbsize() == 0
    client.close()
    restored = run.tool("restore", f"FILE={path}")
    assert restored.returncode == 0, restored.stderr
    assert f"all {len(stored)} read back byte-identical" in restored.stdout
    assert in_store(run, stored)
    again = run.tool("restore", f"FILE={path}")
    assert again.returncode != 0 and "FORCE=1" in again.stderr


@pytest.mark.stack
def test_make_backup_restore_and_migrate_both_ways(tmp_path):
    """N messages in the single Redis; backed up, wiped, restored; moved into the cluster,
    all N readable there; more written there, the cluster backed up, wiped and restored;
    moved back, all of them readable in the single Redis."""
    single = make_run_env(tmp_path / "state", RATE_LIMIT_RPS="100000", RATE_LIMIT_BURST="100000")
    cluster = {**single, "REDIS_TOPOLOGY": "cluster", **cluster_ports_env()}
    n = 300
    stored: dict[str, str] = {}

    run = MakeRun(state_dir=tmp_path / "state", env=single).start()
    try:
        stored.update(post_all(run, [*SAMPLES[1:], *(f"single {i}" for i in range(n))]))
        backup_wipe_restore(run, stored, tmp_path / "single.backup")
        refused = run.tool("migrate", "TO=cluster")  # the cluster is not the one running
        assert refused.returncode != 0 and "runs the single topology" in refused.stderr
    finally:
        run.kill()

    run = MakeRun(state_dir=tmp_path / "state", env=cluster).start()
    try:
        assert len(unreadable(run, stored)) == len(stored)  # each topology its own data
        moved = run.tool("migrate", "TO=cluster", f"FILE={tmp_path / 'to-cluster.backup'}")
        assert moved.returncode == 0, moved.stderr
        assert f"all {len(stored)} read back byte-identical" in moved.stdout
        assert unreadable(run, stored) == []
        assert in_store(run, stored)
        stored.update(post_all(run, [f"cluster {i}" for i in range(50)]))
        backup_wipe_restore(run, stored, tmp_path / "cluster.backup")
    finally:
        run.kill()

    run = MakeRun(state_dir=tmp_path / "state", env=single).start()
    try:
        assert len(unreadable(run, stored)) == 50  # the cluster's own
        moved = run.tool("migrate", "TO=single", f"FILE={tmp_path / 'to-single.backup'}")
        assert moved.returncode == 0, moved.stderr
        assert "50 written" in moved.stdout  # the rest were there already
        assert unreadable(run, stored) == []
        assert in_store(run, stored)
    finally:
        run.kill()
