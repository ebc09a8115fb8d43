"""The ClickHouse server backend (clickhouse-driver, native protocol): the only importer of clickhouse_driver."""

import logging
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import gevent
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from handlers.events import Event
from handlers.sql import json_safe_rows
from webapp.store.base import (
    DATABASE_NAME,
    EVENT_COLUMNS,
    EVENT_SELECT,
    QueryRefused,
    QueryResult,
    QueryTimedOut,
    StoreError,
    StoreUnavailable,
    event_columns,
    probe_powers,
    rows_to_events,
    schema_statements,
    too_large,
)

log = logging.getLogger(__name__)


class _WithoutTraceback(logging.Filter):
    """clickhouse-driver logs every failed connect with its whole traceback, once per retry of an outage;
    the writer says what failed itself (once per outage): the driver's line stays, its traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


logging.getLogger("clickhouse_driver.connection").addFilter(_WithoutTraceback())

TIMEOUT_EXCEEDED = 159
UNREACHABLE = (ch_errors.NetworkError, ch_errors.SocketTimeoutError, EOFError, OSError)


def parse_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    db = (parts.path or "/").strip("/") or "relayhouse"
    if not DATABASE_NAME.match(db):
        raise StoreError(f"CLICKHOUSE_URL: bad database name {db!r}")
    secure = parts.scheme == "clickhouses"
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or (9440 if secure else 9000),
        "user": unquote(parts.username or "default"),
        "password": unquote(parts.password or ""),
        "database": db,
        "secure": secure,
    }


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    # ClickHouse appends a C++ stack trace; the first lines say what went wrong
    return text.split(". Stack trace")[0].split("\nStack trace")[0].strip()


class ClickHouseStore:
    """One writer client (owned by the writer greenlet) and a pool of clients for reads.

    A clickhouse-driver Client is never used by two greenlets at once.
    """

    backend = "clickhouse"

    def __init__(self, url: str, *, connect_timeout_s: float = 3.0, io_timeout_s: float = 30.0,
                 max_rows_to_read: int = 100_000_000, max_memory_bytes: int = 2_000_000_000,
                 query_url: str | None = None):
        self.params = parse_url(url)
        # /query and enrichment may log in as a read-only user of their own (docs/clickhouse.md)
        self.query_params = {**parse_url(query_url), "database": self.params["database"]} if query_url else self.params
        self._profile_readonly: int | None = None
        self._table_functions: frozenset[str] | None = None
        self._powers: list[str] | None = None
        self.db = self.params["database"]
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.max_rows_to_read = max_rows_to_read
        self.max_memory_bytes = max_memory_bytes
        self._writer: Client | None = None
        self._idle: list[Client] = []
        self.insert_timeout_s: int | None = None  # set in a cluster (see leader.py)

    def _client(self, database: str | None = None, params: dict[str, Any] | None = None) -> Client:
        p = params or self.params
        return Client(host=p["host"], port=p["port"], user=p["user"], password=p["password"],
                      database=database or self.db, secure=p["secure"],
                      connect_timeout=self.connect_timeout_s, send_receive_timeout=self.io_timeout_s,
                      sync_request_timeout=self.connect_timeout_s, client_name="relayhouse")

    def _run(self, client: Client, sql: str, params: Any = None, **kw) -> Any:
        return self._guarded(client, client.execute, sql, params, **kw)

    def _guarded(self, client: Client, call, *args, **kw) -> Any:
        """call(*args, **kw) with the driver's errors mapped onto the store's."""
        try:
            return call(*args, **kw)
        except UNREACHABLE as exc:
            client.disconnect()
            raise StoreUnavailable(f"ClickHouse unreachable: {_message(exc)}") from exc
        except ch_errors.ServerException as exc:
            if exc.code == TIMEOUT_EXCEEDED:
                raise QueryTimedOut(_message(exc)) from exc
            raise QueryRefused(_message(exc), exc.code) from exc
        except ch_errors.Error as exc:
            client.disconnect()
            raise StoreUnavailable(f"ClickHouse error: {_message(exc)}") from exc

    def _read(self, sql: str, params: Any = None, **kw) -> Any:
        client = self._idle.pop() if self._idle else self._client()
        try:
            result = self._run(client, sql, params, **kw)
        except StoreUnavailable:
            raise  # the client was disconnected: do not pool it
        except BaseException:
            self._idle.append(client)
            raise
        self._idle.append(client)
        return result

    # -- writer side (the writer greenlet only) --------------------------------------

    def ensure_schema(self) -> None:
        bootstrap = self._client(database="default")
        try:
            for statement in schema_statements(self.db):
                self._run(bootstrap, statement)
        finally:
            bootstrap.disconnect()

    def insert(self, events: list[Event]) -> None:
        if self._writer is None:
            self._writer = self._client()
        # In a cluster, the server drops an insert whose writer stalls past insert_timeout_s mid-way
        # (a paused leader): it cannot land after the lease it was checked under has lapsed.
        settings = {"receive_timeout": self.insert_timeout_s} if self.insert_timeout_s else None
        self._run(self._writer, f"INSERT INTO {self.db}.events ({', '.join(EVENT_COLUMNS)}) VALUES",
                  event_columns(events), columnar=True, types_check=False, settings=settings)

    # -- reads (any greenlet; each borrows its own client) -------------------------

    def max_seq(self) -> int:
        """The store's newest seq. Asked by the writer, a take-over, and every resume on a cluster's follower
        (while the leader's writer has not stored up to it): on the writer's client, several resumes at once
        met there ("Simultaneous queries on single connection"), were told stored seqs were missing, and one
        crashed its route after the 101 (an outside audit: 46 of 60 follower resumes)."""
        return int(self._read(f"SELECT max(seq) FROM {self.db}.events")[0][0])

    def min_seq(self) -> int:
        return int(self._read(f"SELECT min(seq) FROM {self.db}.events")[0][0])

    def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        return self._read(sql, params)

    def select_events(self, clauses: str, params: dict[str, Any]) -> list[Event]:
        """Events from `WHERE ... ORDER BY ... LIMIT ...` clauses (values only in params)."""
        return rows_to_events(self.fetch(EVENT_SELECT.format(db=self.db) + clauses, params))

    def _query_settings(self, client: Client, timeout_s: float, max_rows: int) -> dict[str, Any]:
        """The limits sent with a /query, then readonly=1, which from then on refuses writes, DDL, table
        functions (all of them on 18.16; those that reach outside on current releases) and any SETTINGS
        in the query text. A user whose profile is already read-only cannot take them: readonly=1 takes
        no setting at all (its profile must hold the limits), readonly=2 takes the limits but cannot
        tighten readonly (its grants must refuse table functions; query_powers checks)."""
        if self._profile_readonly is None:
            rows = self._run(client, "SELECT value FROM system.settings WHERE name = 'readonly'")
            self._profile_readonly = int(rows[0][0]) if rows else 0
        if self._profile_readonly == 1:
            return {}
        limits = {
            "max_execution_time": max(1, int(round(timeout_s))),
            "max_result_rows": max_rows + 1,
            "result_overflow_mode": "break",
            "max_rows_to_read": self.max_rows_to_read,
            "max_memory_usage": self.max_memory_bytes,
        }
        # readonly last: the server applies a query's settings in order
        return limits if self._profile_readonly else {**limits, "readonly": 1}

    def query(self, sql: str, timeout_s: float, max_rows: int, max_bytes: int | None = None) -> QueryResult:
        session = self.query_session()  # fresh: a cut-off query leaves nothing behind in the pool
        try:
            return session.query(sql, timeout_s, max_rows, max_bytes)
        finally:
            session.close()

    def query_session(self) -> "QuerySession":
        """A connection for caller text (the /query user, settings and limits) that its holder may
        keep between queries (enrichment does); it connects on its first query."""
        return QuerySession(self, self._client(params=self.query_params))

    def table_functions(self) -> frozenset[str]:
        """The server's own list of table functions (system.table_functions), read once."""
        if self._table_functions is None:
            rows = self._read("SELECT name FROM system.table_functions")
            self._table_functions = frozenset(row[0] for row in rows)
        return self._table_functions

    def database_names(self) -> frozenset[str]:
        """The server's databases now (/query refuses names qualified by any but the relay's)."""
        return frozenset(row[0] for row in self._read("SELECT name FROM system.databases"))

    def query_powers(self) -> list[str]:
        """What a /query connection can do that it must not (handlers.sql.power_probes); [] when restricted.
        Probed once, through the same path and settings as /query."""
        if self._powers is None:
            client = self._client(params=self.query_params)
            try:
                settings = self._query_settings(client, 10.0, 1)
                self._powers = probe_powers(lambda sql: self._run(client, sql, settings=settings), self.db)
            finally:
                client.disconnect()
            if self._powers:
                log.error("/query is refused: its ClickHouse connection (user %r) %s; restrict it as "
                          "docs/clickhouse.md shows, or set QUERY_ALLOW_UNRESTRICTED=1",
                          self.query_params["user"], "; ".join(self._powers))
        return self._powers

    def get_meta(self, key: str) -> str | None:
        rows = self._read(f"SELECT argMax(value, version) FROM {self.db}.relay_meta WHERE key = %(key)s GROUP BY key",
                          {"key": key})
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._read(f"INSERT INTO {self.db}.relay_meta (key, value, version) VALUES",
                   [(key, value, time.time_ns())])

    def close(self) -> None:
        for client in [*self._idle, *([self._writer] if self._writer else [])]:
            client.disconnect()
        self._idle.clear()
        self._writer = None


class QuerySession:
    """One clickhouse-driver Client for caller text, used by one greenlet at a time (its holder's).
    After a failed query its connection is in no known state: the holder closes it."""

    def __init__(self, store: ClickHouseStore, client: Client):
        self.store = store
        self.client = client

    def query(self, sql: str, timeout_s: float, max_rows: int, max_bytes: int | None = None) -> QueryResult:
        """Caller text with the /query limits. Rows are read as the server sends them, block by block:
        past `max_bytes` (their values' size, see value_bytes) the query is refused (QueryRefused naming
        QUERY_MAX_BYTES) without reading the rest. The server's own max_result_bytes cannot do it: it
        shares result_overflow_mode with the row limit, which must `break` (a long result comes back cut
        with `truncated`), and it does not count a constant column."""
        store = self.store
        started = time.perf_counter()
        with gevent.Timeout(timeout_s + 2, QueryTimedOut(f"query exceeded {timeout_s:g} s")):
            settings = store._query_settings(self.client, timeout_s, max_rows)
            columns, rows = store._guarded(self.client, self._read_bounded, sql, settings, max_rows, max_bytes)
        elapsed_ms = (time.perf_counter() - started) * 1000
        truncated = len(rows) > max_rows
        rows = rows[:max_rows]
        return QueryResult(list(columns), json_safe_rows(list(columns), rows), truncated, elapsed_ms)

    def _read_bounded(self, sql: str, settings: dict[str, Any], max_rows: int,
                      max_bytes: int | None) -> tuple[list, list]:
        stream = self.client.execute_iter(sql, settings=settings, with_column_types=True)
        columns: list | None = None
        rows: list = []
        size = 0
        for item in stream:
            if columns is None:
                columns = item  # with_column_types: the first item is the columns
                continue
            if len(rows) > max_rows:
                continue  # the rest of the block that crossed the row limit (the server stops after it)
            size += value_bytes(item)
            if max_bytes is not None and size > max_bytes:
                # the connection is mid-query: the holder closes it (failed queries always are)
                raise too_large(max_bytes)
            rows.append(item)
        return list(columns or []), rows

    def close(self) -> None:
        self.client.disconnect()


def value_bytes(value: Any) -> int:
    """About the size of a value as JSON text: a string's or bytes' length, 8 for any other scalar,
    the sum of the parts of a row, an array, a tuple or a map."""
    if isinstance(value, (str, bytes)):
        return len(value) + 3
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v) for v in value) + 2
    if isinstance(value, dict):
        return sum(value_bytes(k) + value_bytes(v) for k, v in value.items()) + 2
    return 8
