"""The store interface, its errors, and the SQL every backend runs (ClickHouse 18.16 through current)."""

import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from handlers.events import Event, event_from_row
from handlers.sql_probes import power_probes, undecided, unrestricted_powers

DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class StoreError(Exception):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (→ spool on write, 503 on read)."""


class QueryRefused(StoreError):
    """ClickHouse refused or failed the query (→ 400 with its message); `code` is ClickHouse's error code."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


def too_large(max_bytes: int) -> QueryRefused:
    """A /query result over QUERY_MAX_BYTES (→ 400 naming it)."""
    return QueryRefused(f"the result is larger than QUERY_MAX_BYTES ({max_bytes} bytes): "
                        "ask for fewer rows or columns (LIMIT, WHERE) or shorter values")


class QueryTimedOut(StoreError):
    """The query ran past its time limit (→ 504)."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[tuple[str, str]]
    rows: list[list[Any]]  # JSON-safe already
    truncated: bool
    elapsed_ms: float


class Store(Protocol):
    """What the relay needs of a backend. Every method may block only its own greenlet."""

    backend: str

    def ensure_schema(self) -> None: ...
    def insert(self, events: list[Event]) -> None: ...
    def max_seq(self) -> int: ...
    def min_seq(self) -> int: ...
    def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple]: ...
    def select_events(self, clauses: str, params: dict[str, Any]) -> list[Event]: ...
    def query(self, sql: str, timeout_s: float, max_rows: int, max_bytes: int | None = None) -> QueryResult: ...
    def table_functions(self) -> frozenset[str]: ...
    def database_names(self) -> frozenset[str]: ...
    def query_powers(self) -> list[str]: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def close(self) -> None: ...


def probe_powers(run: Callable[[str], object], db: str) -> list[str]:
    """Run handlers.sql_probes.power_probes through `run` (the /query path: same session, same settings) and
    return what it can do that it must not; [] when every probe is refused for lack of rights."""
    outcomes: dict[str, int | None] = {}
    for power, sql in power_probes(db).items():
        try:
            run(sql)
            outcomes[power] = None
        except QueryRefused as exc:
            outcomes[power] = exc.code
        except QueryTimedOut:
            outcomes[power] = -1
    if undecided(outcomes):
        raise StoreUnavailable("the store's schema is not ready yet: /query waits for it")
    return unrestricted_powers(outcomes)


# -- schema ---------------------------------------------------------------------
# One row per event. ORDER BY seq: the resume and history paths are seq ranges,
# answered from the primary index; daily partitions make time ranges prune and
# retention a DROP PARTITION. `date` is MATERIALIZED so SELECT * shows the
# contract's columns only. No TTL clause, no DateTime64: 18.16 has neither.

def schema_statements(db: str) -> list[str]:
    if not DATABASE_NAME.match(db):
        raise StoreError(f"bad database name {db!r}")
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.events (
            seq UInt64,
            ts UInt64,
            topic String,
            data String,
            enrichment String,
            raw UInt8,
            date Date MATERIALIZED toDate(intDiv(ts, 1000))
        ) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(date) ORDER BY seq""",
        f"""CREATE TABLE IF NOT EXISTS {db}.relay_meta (
            key String,
            value String,
            version UInt64
        ) ENGINE = ReplacingMergeTree(version) ORDER BY key""",
    ]


EVENT_COLUMNS = ("seq", "ts", "topic", "data", "enrichment", "raw")


def event_columns(events: list[Event]) -> list[list]:
    """Column-major data for a native insert, in EVENT_COLUMNS order."""
    return [
        [e.seq for e in events],
        [e.ts for e in events],
        [e.topic for e in events],
        [e.data_json.decode() for e in events],
        [_enrichment_text(e) for e in events],
        [1 if e.raw else 0 for e in events],
    ]


def _enrichment_text(event: Event) -> str:
    if not event.enrichment:
        return ""
    start = event.json.rfind(b',"enrichment":')
    return event.json[start + 14:-1].decode()


def rows_to_events(rows: list[tuple]) -> list[Event]:
    return [event_from_row(*row) for row in rows]


EVENT_SELECT = "SELECT seq, ts, topic, data, enrichment, raw FROM {db}.events "


def topic_condition(patterns: tuple[str, ...], params: dict[str, Any]) -> str:
    """SQL for 'topic matches any pattern', values in `params` (never in the text)."""
    if "*" in patterns:
        return "1"
    if not patterns:
        # nothing (a subscription TOKEN_TOPICS emptied: 'everything' here let a scoped token's resume read
        # every topic from the store); every route gives ("*",) for 'all'
        return "0"
    parts = []
    exact = [p for p in patterns if not p.endswith("*")]
    if exact:
        params["topics_exact"] = exact
        parts.append("has(%(topics_exact)s, topic)")
    # prefixes by their length in bytes: one has() per length, not an OR per prefix (ClickHouse 18.16 spent
    # 6 s of CPU on 899 ORed prefixes over 12,000 rows, growing with their square: an outside audit);
    # startsWith() is newer than 18.16, and its lambdas cannot name the row's topic
    by_length: dict[int, list[str]] = {}
    for p in patterns:
        if p.endswith("*"):
            by_length.setdefault(len(p[:-1].encode()), []).append(p[:-1])
    for length, prefixes in sorted(by_length.items()):
        params[f"topic_prefixes_{length}"] = prefixes
        parts.append(f"has(%(topic_prefixes_{length})s, substring(topic, 1, {length}))")
    return "(" + " OR ".join(parts) + ")"
