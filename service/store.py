"""The message store: messages kept in Redis under their SHA-256 digest."""

from __future__ import annotations

import hashlib

from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

import redis
from service.config import Settings

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
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_timeout,
        retry=retry,
        max_connections=settings.redis_max_connections,
        health_check_interval=30,
    )


class MessageStore:
    """Stores and finds messages by digest; translates Redis failures into StoreErrors."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store the message bytes; return (digest, created). An existing value is kept."""
        digest = digest_of(data)
        # NX: a content-addressed value never changes, so a repeat is a no-op, which also
        # makes a retried POST (by the client, nginx or redis-py) safe.
        created = self._call(self._redis.set, KEY_PREFIX + digest, data, nx=True)
        return digest, bool(created)

    def get(self, digest: str) -> bytes | None:
        """The message bytes for a lowercase hex digest, or None."""
        return self._call(self._redis.get, KEY_PREFIX + digest)

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        self._call(self._redis.ping)

    def close(self) -> None:
        """Release the pool's connections."""
        self._redis.close()

    @staticmethod
    def _call(command, *args, **kwargs):
        try:
            return command(*args, **kwargs)
        except redis.OutOfMemoryError as exc:
            raise StoreFull(str(exc)) from exc
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
