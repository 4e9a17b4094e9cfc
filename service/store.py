"""The message store: messages kept in Redis under their SHA-256 digest."""

from __future__ import annotations

import hashlib
from time import perf_counter

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from service.config import Settings
from service.metrics import REDIS_COMMANDS, StoreMetrics

KEY_PREFIX = "msg:"


class StoreError(Exception):
    """Base of the errors the store reports to the API."""


class StoreUnavailable(StoreError):
    """Redis could not be reached or answered too slowly: worth retrying later."""


class StoreFull(StoreError):
    """Redis refused a write because it reached maxmemory."""


def digest_of(data: bytes) -> str:
    """The lowercase hex SHA-256 of the given bytes."""
    return hashlib.sha256(data).hexdigest()


def make_client(settings: Settings) -> redis.Redis:
    """A Redis client with its own pool, bounded timeouts and a bounded retry."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), settings.redis_retries)
    password = {"password": settings.redis_password} if settings.redis_password else {}
    return redis.Redis.from_url(
        settings.redis_url,
        **password,  # else the URL's own, if it has one
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_timeout,
        retry=retry,
        max_connections=settings.redis_max_connections,
        health_check_interval=30,
    )


class MessageStore:
    """Stores and finds messages by digest, timing each Redis command; translates Redis
    failures into StoreErrors."""

    def __init__(self, client: redis.Redis, metrics: StoreMetrics) -> None:
        self._redis = client
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
        created = bool(self._call("SET", self._redis.set, KEY_PREFIX + digest, data, nx=True))
        self._stored[created].inc()
        return digest, created

    def get(self, digest: str) -> bytes | None:
        """The message bytes for a lowercase hex digest, or None."""
        data = self._call("GET", self._redis.get, KEY_PREFIX + digest)
        self._found[data is not None].inc()
        return data

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        self._call("PING", self._redis.ping)

    def close(self) -> None:
        """Release the pool's connections."""
        self._redis.close()

    def _call(self, name: str, command, *args, **kwargs):
        started = perf_counter()
        try:
            return command(*args, **kwargs)
        except redis.OutOfMemoryError as exc:
            self._error(name, "other")
            raise StoreFull(str(exc)) from exc
        except redis.TimeoutError as exc:
            self._error(name, "timeout")
            raise StoreUnavailable(f"TimeoutError: {exc}") from exc
        except (redis.ConnectionError, redis.ReadOnlyError) as exc:
            self._error(name, "connection")
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except redis.RedisError:
            self._error(name, "other")
            raise
        finally:
            self._duration[name].observe(perf_counter() - started)

    def _error(self, command: str, kind: str) -> None:
        self._metrics.redis_errors.labels(command, kind).inc()
