"""Backups of the message store: every message, in a file that checks itself.

    python -m service.backup backup FILE             every stored message into FILE
    python -m service.backup restore FILE [--force]  put them back, then read each one back

FILE "-" is stdout or stdin (compose: `docker compose run -T app python -m service.backup`).
It reaches Redis as the app does (REDIS_URL, REDIS_MODE, REDIS_PASSWORD_FILE: service/config.py),
so the same command serves a single Redis, Sentinel and a cluster (every master).

The file, written to a temporary name and renamed when complete:

    message-service-backup 1
    <digest> <length>            one record per message: the key's SHA-256 hex digest, the
    <the message's bytes>        value's length, the value itself and a line break
    ...
    end <count> <SHA-256 hex of every byte above this line>

Each record checks itself: content addressing makes the value's SHA-256 its digest. The last
line checks the whole: a truncated file has none, a changed or missing record breaks the
count or the checksum. Restoring reads the whole file first and changes nothing unless every
check passes. Why records of values rather than an RDB file or DUMP payloads: the same file
serves both topologies and any Redis version, and it can be checked without a Redis.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, cast

import redis

from service.config import Settings
from service.redis_clients import RedisClient, make_client
from service.store import KEY_PREFIX, digest_of

HEADER = b"message-service-backup 1\n"
BATCH = 200  # keys per round trip
BATCH_BYTES = 8 * 1024 * 1024  # values per round trip when writing
MAX_VALUE = 512 * 1024 * 1024  # Redis's own limit on a string (proto-max-bulk-len)
KEY = re.compile(re.escape(KEY_PREFIX.encode()) + rb"([0-9a-f]{64})")
RECORD = re.compile(rb"^([0-9a-f]{64}) ([0-9]{1,10})\n$")
FOOTER = re.compile(rb"^end ([0-9]{1,12}) ([0-9a-f]{64})\n$")


class BackupError(Exception):
    """A backup that cannot be trusted, or a store that must not be written to."""


@dataclass(frozen=True)
class Summary:
    """What a backup file holds."""

    count: int
    checksum: str  # SHA-256 hex of the file above its last line
    size: int  # bytes
    skipped: int = 0  # keys under msg: whose value is not the message their digest names


@dataclass(frozen=True)
class Restored:
    """What a restore did."""

    backup: Summary
    new: int  # written
    present: int  # already there (the same bytes: content-addressed)
    verified: int  # read back from the store, byte-identical to the backup's


def connect(settings: Settings) -> RedisClient:
    """A client as the app's (standalone, Sentinel, cluster), with waits long enough for
    batches of large values: the app's are bounded for requests, not for copying."""
    return make_client(replace(settings, redis_connect_timeout=5.0, redis_timeout=60.0))


# --- Writing ---


def stored_messages(clients: Iterable[RedisClient]) -> Iterator[tuple[str, bytes] | str]:
    """Every (digest, message) stored, once each, from every client's keys (a cluster client
    scans every master). A key whose value does not match its digest is yielded as its name
    alone, to be reported: it is not a message the API could have stored."""
    seen: set[bytes] = set()  # a message read from several sources (migrate) is written once
    for client in clients:
        # SCAN returns every key that exists for the whole scan, perhaps twice; messages are
        # never changed or deleted, so that is every message stored before the backup began.
        keys: list[bytes] = []
        for key in client.scan_iter(match=KEY_PREFIX + "*", count=1000):
            keys.append(key)
            if len(keys) == BATCH:
                yield from _values(client, keys, seen)
                keys = []
        yield from _values(client, keys, seen)


def _values(
    client: RedisClient, keys: list[bytes], seen: set[bytes]
) -> Iterator[tuple[str, bytes] | str]:
    keys = [k for k in dict.fromkeys(keys) if k not in seen]  # SCAN may repeat a key
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    for key, value in zip(keys, pipe.execute(), strict=True):
        match = KEY.fullmatch(key)
        if value is None:
            continue  # gone since the scan: only FLUSHALL or DEL by hand does that
        if match is None or digest_of(value) != match.group(1).decode():
            yield key.decode(errors="replace")
            continue
        seen.add(key)
        yield match.group(1).decode(), value


def write_backup(records: Iterable[tuple[str, bytes] | str], out: IO[bytes]) -> Summary:
    """Write the records in the backup format; return what was written."""
    checksum = hashlib.sha256()
    count = skipped = size = 0

    def put(data: bytes) -> None:
        nonlocal size
        out.write(data)
        checksum.update(data)
        size += len(data)

    put(HEADER)
    for record in records:
        if isinstance(record, str):
            print(
                f"backup: skipped {record}: its value is not the message its digest names",
                file=sys.stderr,
            )
            skipped += 1
            continue
        digest, value = record
        put(b"%s %d\n" % (digest.encode(), len(value)))
        put(value)
        put(b"\n")
        count += 1
    footer = b"end %d %s\n" % (count, checksum.hexdigest().encode())
    out.write(footer)
    return Summary(count, checksum.hexdigest(), size + len(footer), skipped)


def backup(clients: Iterable[RedisClient], path: str) -> Summary:
    """Every stored message into the file at `path` ("-": stdout), which appears only once
    complete (written under a temporary name, synced, renamed)."""
    records = stored_messages(clients)
    if path == "-":
        summary = write_backup(records, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return summary
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".partial", delete=False
    ) as tmp:
        try:
            summary = write_backup(records, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
    return summary


# --- Reading ---


def read_backup(src: IO[bytes]) -> Generator[tuple[str, bytes], None, Summary]:
    """The records of a backup, each checked; at the end, the count and the checksum are,
    and what the file holds is returned. Raises BackupError at the first thing wrong, saying
    what and where."""
    checksum = hashlib.sha256()
    header = src.readline(len(HEADER) + 1)
    if header != HEADER:
        raise BackupError("not a message-service backup (its first line is not the header)")
    checksum.update(header)
    count = 0
    while True:
        line = src.readline(100)
        if not line:
            raise BackupError(
                f"the file ends after {count} records without its last line: it is "
                "incomplete (truncated, or its backup did not finish)"
            )
        if not line.endswith(b"\n") and len(line) < 100:
            raise BackupError(f"the file ends inside a line after {count} records: it is truncated")
        if footer := FOOTER.match(line):
            break
        record = RECORD.match(line)
        if record is None:
            raise BackupError(f"record {count + 1} is malformed: {line[:80]!r}")
        digest, length = record.group(1).decode(), int(record.group(2))
        if length > MAX_VALUE:
            raise BackupError(f"record {count + 1} claims {length} bytes, more than Redis holds")
        value = src.read(length)
        end = src.read(1)
        if len(value) < length or end != b"\n":
            raise BackupError(f"record {count + 1} ({digest}) is cut short: the file is truncated")
        if digest_of(value) != digest:
            raise BackupError(
                f"record {count + 1}: its message does not match its digest {digest} (corrupted)"
            )
        checksum.update(line)
        checksum.update(value)
        checksum.update(end)
        count += 1
        yield digest, value
    stated_count, stated_checksum = int(footer.group(1)), footer.group(2).decode()
    if stated_count != count:
        raise BackupError(f"the last line says {stated_count} messages, the file holds {count}")
    if stated_checksum != checksum.hexdigest():
        raise BackupError("the checksum in the last line does not match the file (corrupted)")
    if src.read(1):
        raise BackupError("there is more after the last line (corrupted, or two files joined)")
    return Summary(count, stated_checksum, src.tell())


def check_backup(src: IO[bytes]) -> Summary:
    """Read a whole backup, checking everything; what it holds, or BackupError."""
    records = read_backup(src)
    while True:
        try:
            next(records)
        except StopIteration as end:
            return cast(Summary, end.value)


def is_empty(client: RedisClient) -> bool:
    """No key at all (a cluster client counts every master's)."""
    return client.dbsize() == 0


def restore(target: RedisClient, src: IO[bytes], force: bool = False) -> Restored:
    """Check the whole backup, then put its messages into the store (SET NX, as the app
    stores them), then read every one back. Nothing is written unless the backup checks out,
    nor into a store that holds any key unless `force`: then the backup's messages are added
    to what is there, which stays."""
    summary = check_backup(src)
    if not force and not is_empty(target):
        raise BackupError(
            "the store is not empty: nothing restored. Restore into an empty store, or add "
            "the backup's messages to what is there with --force (FORCE=1)"
        )
    src.seek(0)
    new = 0
    for batch in _batches(read_backup(src)):
        pipe = target.pipeline(transaction=False)
        for digest, value in batch:
            pipe.set(KEY_PREFIX + digest, value, nx=True)
        new += sum(1 for created in pipe.execute() if created)
    src.seek(0)
    verified = 0
    for batch in _batches(read_backup(src)):
        pipe = target.pipeline(transaction=False)
        for digest, _ in batch:
            pipe.get(KEY_PREFIX + digest)
        for (digest, value), stored in zip(batch, pipe.execute(), strict=True):
            if stored != value:
                state = "missing" if stored is None else "different"
                raise BackupError(f"after restoring, {KEY_PREFIX}{digest} is {state} in the store")
            verified += 1
    return Restored(summary, new, summary.count - new, verified)


def _batches(records: Iterator[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    batch: list[tuple[str, bytes]] = []
    size = 0
    for record in records:
        batch.append(record)
        size += len(record[1])
        if len(batch) == BATCH or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def open_backup(path: str) -> IO[bytes]:
    """The backup at `path`, or stdin ("-") copied to a temporary file: it is read three
    times (checked, written, read back)."""
    if path != "-":
        try:
            return Path(path).open("rb")
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror}") from exc
    copy = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
    shutil.copyfileobj(sys.stdin.buffer, copy)
    copy.seek(0)
    return copy


# --- Saying what was done ---


def describe(summary: Summary) -> str:
    """The count, size and checksum of a backup, in one line."""
    skipped = f" ({summary.skipped} keys skipped: see above)" if summary.skipped else ""
    return f"{summary.count} messages, {summary.size} bytes, sha256 {summary.checksum}{skipped}"


def describe_restore(done: Restored, seconds: float) -> str:
    """What a restore did, in one line."""
    return (
        f"{describe(done.backup)}: {done.new} written, {done.present} already there; all "
        f"{done.verified} read back byte-identical ({seconds:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    """python -m service.backup backup|restore FILE."""
    parser = argparse.ArgumentParser(prog="python -m service.backup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backup", help="every stored message into FILE").add_argument("file")
    restore_parser = sub.add_parser("restore", help="the messages in FILE back into the store")
    restore_parser.add_argument("file")
    restore_parser.add_argument("--force", action="store_true", help="into a non-empty store")
    args = parser.parse_args(argv)
    client = connect(Settings.from_env())
    started = time.monotonic()
    try:
        if args.command == "backup":
            summary = backup([client], args.file)
            where = "stdout" if args.file == "-" else args.file
            took = time.monotonic() - started
            print(f"backup: {describe(summary)} in {where} ({took:.1f} s)", file=sys.stderr)
            return 0
        with open_backup(args.file) as src:
            done = restore(client, src, args.force)
        print(f"restore: {describe_restore(done, time.monotonic() - started)}", file=sys.stderr)
        return 0
    except BackupError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"{args.command}: Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
