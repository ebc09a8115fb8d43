"""Enrichment as data: how fresh a cached result is, and a result row as the `enrichment` object."""

from dataclasses import dataclass
from typing import Any

FRESH, STALE, MISSING = "fresh", "stale", "missing"


@dataclass(frozen=True, slots=True)
class Cached:
    """One topic's last enrichment result (None: the query returned no row)."""

    fetched_ms: int
    value: dict[str, Any] | None


def freshness(entry: Cached | None, now_ms: int, ttl_ms: int) -> str:
    """fresh: use it; stale: use it and refresh in the background; missing: fetch (bounded wait)."""
    if entry is None:
        return MISSING
    return FRESH if now_ms - entry.fetched_ms < ttl_ms else STALE


def row_to_enrichment(columns: list[tuple[str, str]], rows: list[list[Any]]) -> dict[str, Any] | None:
    """The first result row as {column: value}; None when there is no row or no column."""
    if not rows or not columns:
        return None
    return {name: value for (name, _type), value in zip(columns, rows[0], strict=False)}
