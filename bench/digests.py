"""What the GET scenarios ask for: messages stored in a target's Redis ahead of the runs
(straight, pipelined, under the key the app reads), and a file of their digests for each wrk
run. A cold run gets a fresh slice of digests no run has used before."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import redis
import requests

from service.store import KEY_PREFIX, digest_of
from tests.harness import edge_session

BATCH = 10_000  # commands per pipeline round trip
HOT_MESSAGE = "bench hot message"


def hit_messages(n: int = 500) -> list[str]:
    """The messages GET hit (and the soak's mix) cycle through."""
    return [f"bench seed message {i}" for i in range(n)]


def cold_messages(n: int) -> list[str]:
    """The messages GET cold asks for, each once."""
    return [f"bench cold message {i}" for i in range(n)]


def store(client: redis.Redis, messages: Iterable[str]) -> list[str]:
    """Store the messages as the app does (KEY_PREFIX + SHA-256 hex -> the UTF-8 bytes; the
    reference uses the same keys), in pipelined batches; return their digests in order."""
    digests = []
    pipe = client.pipeline(transaction=False)
    for message in messages:
        data = message.encode()
        digest = digest_of(data)
        pipe.set(KEY_PREFIX + digest, data)
        digests.append(digest)
        if len(pipe) >= BATCH:
            pipe.execute()
    pipe.execute()
    return digests


def check_served(base_url: str, pairs: Iterable[tuple[str, str]]) -> requests.Response:
    """GET each digest through the target's API: 200 and its message, or AssertionError.
    Returns the last answer."""
    session = edge_session()
    answer = None
    for digest, message in pairs:
        answer = session.get(f"{base_url}/messages/{digest}", timeout=10)
        if answer.status_code != 200 or answer.json() != {"message": message}:
            raise AssertionError(
                f"{base_url}: {digest} answered {answer.status_code} {answer.text!r}"
            )
    if answer is None:
        raise ValueError("nothing to check")
    return answer


class Digests:
    """One target's stored digests, and the file each wrk run reads."""

    def __init__(
        self,
        folder: Path,
        hit: list[str],
        hot: str | None = None,
        cold: list[str] | None = None,
        cold_rate: float = 5000,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.cold = cold or []
        self.cold_rate = cold_rate  # the highest cold rate expected: sizes each slice
        self.cold_used = 0
        self.cold_files = 0
        self.hit_file = folder / "hit.txt"
        self.hit_file.write_text("\n".join(hit) + "\n")
        self.hot_file = folder / "hot.txt"
        self.hot_file.write_text(f"{hot or hit[0]}\n")

    @staticmethod
    def needed(cold_rate: float, seconds: float, warmup: float, runs: int) -> int:
        """Cold digests for `runs` cold runs, each with its warm-up, at up to cold_rate."""
        return runs * (
            slice_size(cold_rate, seconds) + (slice_size(cold_rate, warmup) if warmup else 0)
        )

    def file_for(self, scenario: str, seconds: float) -> Path:
        """The digests file of one wrk run: a fresh slice for cold, else the shared one."""
        if scenario == "cold":
            return self.cold_slice(seconds)
        return self.hot_file if scenario == "hot" else self.hit_file

    def cold_slice(self, seconds: float) -> Path:
        """The next unused digests, enough for `seconds` at cold_rate, in a file of their own."""
        n = slice_size(self.cold_rate, seconds)
        if self.cold_used + n > len(self.cold):
            raise RuntimeError(
                f"{len(self.cold)} cold digests stored, {self.cold_used} used, {n} more needed:"
                " store more (--cold-rate sizes them)"
            )
        self.cold_files += 1
        path = self.folder / f"cold-{self.cold_files}.txt"
        path.write_text("\n".join(self.cold[self.cold_used : self.cold_used + n]) + "\n")
        self.cold_used += n
        return path


def slice_size(rate: float, seconds: float) -> int:
    """Digests for one wrk run of `seconds` (wrk runs whole seconds, at least one)."""
    return math.ceil(rate * max(1, round(seconds)))
