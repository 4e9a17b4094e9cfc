"""make run's console: one line per lifecycle event, on its standard error, which the
supervisor, its finish hook and make reload all write to."""

from __future__ import annotations

import sys
from datetime import UTC, datetime


def say(name: str, event: str) -> None:
    """One lifecycle line on make run's console."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} {name}: {event}", file=sys.stderr, flush=True)
