"""Ports on this host: a free one to listen on, and whether one can be listened on now. For
make run's check that its ports are free, make backup's own redis-servers, and the tests."""

from __future__ import annotations

import socket

import port_for


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    return port_for.select_random()


def bindable(port: int, reuse_address: bool = False) -> bool:
    """Whether a listener could bind 127.0.0.1:port now. reuse_address: as servers bind
    (SO_REUSEADDR), so that a port whose last connections are in TIME_WAIT counts as free."""
    with socket.socket() as probe:
        if reuse_address:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
