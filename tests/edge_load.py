"""Constant load through the TLS edge, for tests that change something under it (a reload,
a restart) and count what clients saw meanwhile."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests

from tests.harness import edge_session
from tests.helpers import eventually, sha256

CLIENTS = 4  # threads, each with its own keep-alive session through the edge
UNKNOWN = "0" * 64  # a digest nothing is stored under: 404 is its right answer
# How a kept-alive connection closed unread shows: nginx's retiring worker closed it with
# TLS's close_notify (the client reads "Connection aborted"), or without it (an EOF that
# TLS reports as a protocol violation).
CLOSED_UNANSWERED = ("Connection aborted", "EOF occurred in violation of protocol")


@dataclass
class Load:
    """Clients POSTing messages and GETting them back (and an unknown digest) through the
    edge over TLS until stopped. Anything but the right answer is a failure: a status other
    than 201, 200 or 404 where each is due, or a connection error, with one exception kept
    apart: a kept-alive connection that nginx closes, unread, as a reload retires its old
    worker, while the client sends on it (HTTP/1.1's race: the request reached nothing).
    Such a request is counted in `dropped` and sent again, once, as api.md allows; the
    second try must be answered right."""

    url: str
    served: int = 0
    dropped: list[str] = field(default_factory=list)
    timings: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds)
    failures: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def client(self, n: int) -> None:
        session = edge_session()
        i = 0
        while not self.stopping.is_set():
            i += 1
            message = f"reload {n} {i} {time.time()}"
            if self.ask(session, "post", "/messages", 201, json={"message": message}):
                self.ask(session, "get", f"/messages/{sha256(message)}", 200)
            if i % 5 == 0:
                self.ask(session, "get", f"/messages/{UNKNOWN}", 404)

    def ask(
        self, session: requests.Session, method: str, path: str, due: int, again: bool = True, **kw
    ) -> bool:
        """One request; whether it got its due answer."""
        sent = time.monotonic()
        what = f"{time.strftime('%H:%M:%S')} {method.upper()} {path}"
        try:
            status = session.request(method, self.url + path, timeout=15, **kw).status_code
            failure = None if status == due else f"{what}: {status}"
        except requests.ConnectionError as exc:
            if again and any(closed in str(exc) for closed in CLOSED_UNANSWERED):
                with self.lock:
                    self.dropped.append(f"{what}: {exc!r}")
                return self.ask(session, method, path, due, again=False, **kw)
            failure = f"{what}: {exc!r}"
        except requests.RequestException as exc:
            failure = f"{what}: {exc!r}"
        with self.lock:
            self.timings.append((sent, time.monotonic() - sent))
            self.served += failure is None
            if failure:
                self.failures.append(failure)
        return failure is None

    def slowest(self, since: float) -> float:
        """The longest answer to a request sent since then, in seconds."""
        with self.lock:
            return max((took for sent, took in self.timings if sent >= since), default=0.0)

    def __enter__(self) -> Load:
        for n in range(CLIENTS):
            thread = threading.Thread(target=self.client, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)
        eventually(lambda: self.served >= 20, 30)  # it runs before what it measures
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
