"""The message store: messages kept in Redis under their SHA-256 digest."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from time import perf_counter
from typing import TypeVar, cast

import redis
from redis.cluster import RedisCluster

from service.metrics import REDIS_COMMANDS, StoreMetrics
from service.redis_clients import RedisClient, RedisClientPerTracing

KEY_PREFIX = "msg:"
T = TypeVar("T")


class StoreError(Exception):
    """Base of the errors the store reports to the API."""


class StoreUnavailable(StoreError):
    """Redis could not be reached or answered too slowly: worth retrying later."""


class StoreFull(StoreError):
    """Redis refused a write because it reached maxmemory."""


class StoreNotSaving(StoreError):
    """Redis cannot write to its disk (MISCONF: a full disk, say) and refuses writes until it
    can again: worth retrying later."""


def digest_of(data: bytes) -> str:
    """The lowercase hex SHA-256 of the given bytes."""
    return hashlib.sha256(data).hexdigest()


class MessageStore:
    """Stores and finds messages by digest, timing each Redis command; translates Redis
    failures into StoreErrors."""

    def __init__(
        self,
        connect: Callable[[], RedisClient],
        metrics: StoreMetrics,
        wait: tuple[int, int] = (0, 0),
        trace_client: Callable[[RedisClient], None] | None = None,
    ) -> None:
        # Commands made while a span records (a traced request) go through a second client,
        # instrumented by trace_client; the others skip tracing altogether.
        self._clients = RedisClientPerTracing(connect, trace_client)
        self._wait_replicas, self._wait_timeout_ms = wait
        self._metrics = metrics
        # Bound once: looking a labelled child up on every request costs time.
        self._stored = {
            True: metrics.stored.labels("new"),
            False: metrics.stored.labels("existing"),
        }
        self._found = {True: metrics.lookups.labels("hit"), False: metrics.lookups.labels("miss")}
        self._duration = {c: metrics.redis_duration.labels(c) for c in REDIS_COMMANDS}

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store the message bytes; return (digest, created). An existing value is kept."""
        digest = digest_of(data)
        # NX: a content-addressed value never changes, so a repeat is a no-op, which also
        # makes a retried POST (by the client, nginx or redis-py) safe.
        key = KEY_PREFIX + digest
        created = self._call("SET", lambda r: self._set(r, key, data))
        self._stored[created].inc()
        return digest, created

    def _set(self, target: RedisClient, key: str, data: bytes) -> bool:
        if self._wait_replicas:
            created = self._set_replicated(target, key, data)
        else:
            # execute_command: redis-py's set() inspects its arguments for deprecations first.
            # (mypy 2.4 does not apply untyped_calls_exclude to a method called on a union.)
            created = bool(target.execute_command("SET", key, data, "NX"))  # type: ignore[no-untyped-call]
        # Redis (appendfsync everysec) answers a write after it has tried to append it to the
        # AOF, whether that worked or not: on a full disk, the writes that meet the first
        # failure get OK while they are only in memory, and a Redis killed before the disk has
        # room again loses them. From then on Redis refuses writes and PING (MISCONF) until
        # it has written all it holds. So a PING after the reply: refused, this write may not
        # be on disk (503; a retry is harmless). A second round trip, on purpose: pipelined,
        # the PING would be answered before Redis tries to write.
        if isinstance(target, RedisCluster):
            self._clients.master_of(target, key).ping()
        else:
            target.ping()
        return created

    def _set_replicated(self, target: RedisClient, key: str, data: bytes) -> bool:
        # SET and WAIT on one connection: WAIT counts the replicas that have this client's
        # writes. Too few in time: not acknowledged (503); the client's retry is harmless.
        if isinstance(target, RedisCluster):  # the key's master node, on one connection
            target = self._clients.master_of(target, key)
        pipe = target.pipeline(transaction=False)
        pipe.set(key, data, nx=True)
        pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)
        created, replicas = pipe.execute()
        if replicas < self._wait_replicas:
            raise StoreUnavailable(f"written, but {replicas} of {self._wait_replicas} replicas")
        return bool(created)

    def get(self, digest: str) -> bytes | None:
        """The message bytes for a lowercase hex digest, or None."""
        key = KEY_PREFIX + digest
        # bytes, not str: the clients do not decode responses (make_client).
        data = cast("bytes | None", self._call("GET", lambda r: r.get(key)))
        self._found[data is not None].inc()
        return data

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        # Redis answers PING with MISCONF while it cannot write to disk: it is there, and reads
        # still work. Not ready would take every instance out of service for a full disk.
        with contextlib.suppress(StoreNotSaving):
            self._call("PING", lambda r: r.ping())

    def close(self) -> None:
        """Release the pools' connections."""
        self._clients.close()

    def _call(self, name: str, command: Callable[[RedisClient], T]) -> T:
        started = perf_counter()
        try:
            return command(self._clients.current())
        except redis.OutOfMemoryError as exc:
            self._error(name, "other")
            raise StoreFull(str(exc)) from exc
        except redis.TimeoutError as exc:
            self._error(name, "timeout")
            raise StoreUnavailable(f"TimeoutError: {exc}") from exc
        except (
            redis.ConnectionError,
            redis.ReadOnlyError,
            redis.exceptions.ClusterError,
            redis.exceptions.TryAgainError,
            redis.exceptions.AskError,
            redis.exceptions.RedisClusterException,
        ) as exc:
            # The cluster ones: a failover under way, a slot moving (MOVED, ASK), no node
            # reachable for now. All pass; the client may retry.
            self._error(name, "connection")
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except redis.ResponseError as exc:
            # redis-py has no class of its own for MISCONF (Redis 7.0: "MISCONF Errors writing
            # to the AOF file: No space left on device"; or a failed RDB save).
            if not str(exc).startswith("MISCONF"):
                self._error(name, "other")
                raise
            self._error(name, "persistence")
            raise StoreNotSaving(str(exc)) from exc
        except redis.RedisError:
            self._error(name, "other")
            raise
        finally:
            self._duration[name].observe(perf_counter() - started)

    def _error(self, command: str, kind: str) -> None:
        self._metrics.redis_errors.labels(command, kind).inc()
