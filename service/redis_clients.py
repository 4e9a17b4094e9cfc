"""The store's Redis clients: how one is made (standalone, through Sentinel, or a cluster),
and the pair of them, traced and not, that the store chooses between on every command."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import redis
from opentelemetry import trace
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from service.config import Settings

RedisClient = redis.Redis | RedisCluster


def make_client(settings: Settings) -> RedisClient:
    """A client for Redis standalone, through Sentinel, or a Redis Cluster, with its own
    connection pool(s), bounded timeouts and a bounded retry."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), settings.redis_retries)
    timeouts = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_timeout,
    }
    password = {"password": settings.redis_password} if settings.redis_password else {}
    if settings.redis_mode == "sentinel":
        # Sentinel names the current master; on a failover the pool asks again.
        sentinel: Sentinel = Sentinel(
            list(settings.redis_sentinels), sentinel_kwargs=dict(timeouts), **timeouts
        )
        master: redis.Redis = sentinel.master_for(
            settings.redis_sentinel_master,
            retry=retry,
            max_connections=settings.redis_max_connections,
            **password,
            **timeouts,
        )
        return master
    if settings.redis_mode == "cluster":
        # Any node's URL will do: the client learns the slots and follows MOVED/ASK.
        return RedisCluster.from_url(settings.redis_url, retry=retry, **password, **timeouts)
    return redis.Redis.from_url(
        settings.redis_url,
        retry=retry,
        max_connections=settings.redis_max_connections,
        health_check_interval=30,
        **password,  # else the URL's own, if it has one
        **timeouts,
    )


class RedisClientPerTracing:
    """Two Redis clients made alike, and only one of them instrumented for tracing: a command
    made while a span records (a traced request) goes through the instrumented one, every
    other command skips tracing altogether. Instrumenting every client
    (RedisInstrumentor().instrument()) put a wrapper and a context lookup on every command of
    every request; this way an untraced request costs what it would without tracing.

    Clients are made on first use, not here: a cluster client reads the slot map when it is
    made, and the app must start while Redis is unreachable or a cluster still forming.

    Relies on opentelemetry-instrumentation-redis 0.66b1: RedisInstrumentor.instrument_client
    instruments the one client it is given, not its class, and for a RedisCluster not the
    clients of its nodes either (master_of instruments those)."""

    def __init__(
        self,
        connect: Callable[[], RedisClient],
        trace_client: Callable[[RedisClient], None] | None = None,
    ) -> None:
        self._connect = connect
        self._trace_client = trace_client
        self._clients: dict[bool, RedisClient] = {}  # by "traced"
        self._traced_nodes: weakref.WeakSet[redis.Redis] = weakref.WeakSet()
        self._lock = threading.Lock()

    def current(self) -> RedisClient:
        """The client for a command made now."""
        traced = self._trace_client is not None and trace.get_current_span().is_recording()
        client = self._clients.get(traced)
        return client if client is not None else self._make(traced)

    def master_of(self, cluster: RedisCluster, key: str) -> redis.Redis:
        """The client of the node that is master for the key, traced if `cluster` is."""
        node = cluster.get_redis_connection(cluster.get_node_from_key(key))
        if self._trace_client is not None and cluster is self._clients.get(True):
            with self._lock:
                if node not in self._traced_nodes:
                    self._trace_client(node)
                    self._traced_nodes.add(node)
        return node

    def close(self) -> None:
        """Release the clients' connections."""
        for client in self._clients.values():
            client.close()

    def _make(self, traced: bool) -> RedisClient:
        with self._lock:
            if traced not in self._clients:
                client = self._connect()
                if traced and self._trace_client is not None:
                    self._trace_client(client)
                self._clients[traced] = client
            return self._clients[traced]
