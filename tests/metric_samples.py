"""The /metrics exposition as Prometheus reads it, for tests that check a figure in it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Key, float]:
    """(sample name, labels) -> value, read by Prometheus's own parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def at(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())
