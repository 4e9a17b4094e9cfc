"""The store against real redis-servers: storing, failures, recovery, authentication."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.metrics import StoreMetrics
from service.store import MessageStore, StoreUnavailable, digest_of, make_client
from tests.conftest import free_port, redis_executor


def store_for(url: str, **settings) -> MessageStore:
    metrics = StoreMetrics.create(CollectorRegistry())
    return MessageStore(make_client(Settings(redis_url=url, **settings)), metrics)


def test_put_then_get(redis_url):
    store = store_for(redis_url)
    digest, created = store.put(b"foo")
    assert digest == digest_of(b"foo")
    assert created is True
    assert store.get(digest) == b"foo"


def test_second_put_reports_existing(redis_url):
    store = store_for(redis_url)
    store.put(b"foo")
    assert store.put(b"foo") == (digest_of(b"foo"), False)


def test_get_missing_is_none(redis_url):
    assert store_for(redis_url).get("0" * 64) is None


def test_nothing_listening_is_unavailable():
    store = store_for(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable):
        store.put(b"foo")
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_hung_redis_is_unavailable_not_a_hang(silent_server):
    store = store_for(f"redis://127.0.0.1:{silent_server}/0", redis_timeout=0.2, redis_retries=2)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.get("0" * 64)
    # Three attempts of 0.2 s plus backoff; the bound only tells a hang from a timeout.
    assert time.monotonic() - started < 5


def test_store_recovers_when_redis_comes_back(tmp_path):
    port = free_port()
    server = redis_executor(tmp_path, port)
    server.start()
    store = store_for(f"redis://127.0.0.1:{port}/0")
    digest, _ = store.put(b"before")
    server.stop()
    with pytest.raises(StoreUnavailable):
        store.get(digest)
    server.start()
    try:
        assert store.get(digest) == b"before"  # kept by the AOF across the restart
        assert store.put(b"after")[1] is True
    finally:
        server.stop()


def test_password_in_url(tmp_path):
    port = free_port()
    server = redis_executor(tmp_path, port, "--requirepass", "s3cret")
    with server:
        assert store_for(f"redis://:s3cret@127.0.0.1:{port}/0").put(b"foo")[1] is True
        with pytest.raises(StoreUnavailable):
            store_for(f"redis://:wrong@127.0.0.1:{port}/0").put(b"foo")


def test_replies_are_parsed_by_hiredis(redis_url):
    client = make_client(Settings(redis_url=redis_url))
    connection = client.connection_pool.get_connection()
    try:
        assert type(connection._parser).__name__ == "_HiredisParser"
    finally:
        client.connection_pool.release(connection)


def test_each_client_has_its_own_bounded_pool(redis_url):
    first = make_client(Settings(redis_url=redis_url, redis_max_connections=3))
    second = make_client(Settings(redis_url=redis_url))
    assert first.connection_pool is not second.connection_pool
    assert first.connection_pool.max_connections == 3
    kwargs = first.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (0.25, 0.5)
