"""Reading Prometheus text exposition in tests, with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called name."""
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called name whose labels include the given ones (0 if none)."""
    return sum(v for got, v in samples(text, name) if labels.items() <= got.items())


def series_count(text: str) -> int:
    """How many series the text exposes."""
    return sum(len(f.samples) for f in text_string_to_metric_families(text))
