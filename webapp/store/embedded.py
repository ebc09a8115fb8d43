"""The embedded chDB backend (the default): the only importer of chdb. Every call runs on a thread of its lane."""

import logging
import os
import re
import time
import uuid
from decimal import Decimal
from typing import Any

import gevent
import gevent.lock
import gevent.threadpool

from handlers import jsonx
from handlers.events import Event
from handlers.sql import json_safe_rows, render_params
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
from webapp.threads import call_in_thread, call_in_turn

log = logging.getLogger(__name__)
CODE = re.compile(r"Code: (\d+)")
TIMEOUT_EXCEEDED = 159
TAINT_S = 60.0
"""After a failure, a lane frames its results this long (see Lane.sql): a failed query's output arrives within it."""


def _message(exc: Exception) -> str:
    return str(exc).split("Stack trace")[0].strip()


def _one_document(body: bytes) -> Any:
    """The one JSON document of a JSONCompact result (nothing for a statement without a result);
    NotJSON when there is anything more or less."""
    return jsonx.loads(body) if body.strip() else {"meta": [], "data": []}


def _framed(body: bytes, nonce: str) -> bytes:
    """What lies between the two markers of `nonce` (see Lane.sql); NotJSON when they are missing."""
    start, end = f'"{nonce}-1"\n'.encode(), f'"{nonce}-2"\n'.encode()
    first, last = body.find(start), body.rfind(end)
    if first < 0 or last < first:
        raise jsonx.NotJSON("the result's markers are missing")
    return body[first + len(start):last]


def readonly_setup(settings: dict[str, Any]) -> tuple[str, ...]:
    """SET each limit, then readonly=1: from then on the session refuses writes, DDL, every table
    function that reads files or the network, and any change of a setting — its own SETTINGS clauses
    included, at any depth (measured on chDB 4.4: a subquery's SETTINGS max_execution_time=0 or
    max_rows_to_read=0 does not lift the session's limit)."""
    return (*(f"SET {name} = {value!r}" for name, value in settings.items()), "SET readonly = 1")


FLOAT_TYPE = re.compile(r"(?:Array\(|Nullable\(|LowCardinality\()*Float(?:32|64)\)*")


def _as_float(value: Any) -> Any:
    """A float column's value as the server's driver gives it: whole numbers as floats (lists likewise)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        return [_as_float(item) for item in value]
    return value


QUERY_WAITING_MAX = 8
"""/query callers that may wait for the one query session at once; past it a /query is a 503 at once."""


class Lane:
    """One chDB session on one thread of its own: calls on a lane run one at a time, in order, and
    never on the gevent hub. `setup` runs once when the session opens."""

    def __init__(self, path: str, setup: tuple[str, ...] = (), framed: bool = False):
        self.path = path
        self.setup = setup
        self.framed = framed
        self._tainted_at = -TAINT_S  # monotonic time of the last failure
        self.pool = gevent.threadpool.ThreadPool(1)
        self.session = None

    def call(self, fn, *args):
        return call_in_thread(fn, *args, pool=self.pool)

    def _open(self):
        if self.session is None:
            from chdb import session  # imported on first use: chdb is large and only this backend needs it

            os.makedirs(self.path, exist_ok=True)
            sess = session.Session(self.path)
            try:
                for statement in self.setup:
                    sess.query(statement, "CSV")
            except BaseException:
                sess.close()
                raise
            self.session = sess
        return self.session

    def _execute(self, sess, sql: str, params: dict | None, fmt: str):
        try:
            return sess.query(sql, fmt, params=params) if params else sess.query(sql, fmt)
        except RuntimeError as exc:
            self._tainted_at = time.monotonic()
            code = CODE.search(str(exc))
            if code and int(code.group(1)) == TIMEOUT_EXCEEDED:
                raise QueryTimedOut(_message(exc)) from exc
            raise QueryRefused(_message(exc), int(code.group(1)) if code else None) from exc
        except OSError as exc:
            raise StoreUnavailable(f"chDB at {self.path}: {exc}") from exc

    def _output(self, sess, sql: str, params: dict | None, max_bytes: int | None) -> bytes:
        result = self._execute(sess, sql, params, "JSONCompact")
        if max_bytes is not None and result.size() > max_bytes:
            raise too_large(max_bytes)
        return result.bytes()

    def sql(self, sql: str, params: dict | None = None, fmt: str = "JSONCompact",
            max_bytes: int | None = None) -> Any:
        """Run in the lane's thread; map chDB's errors onto the store's. With `max_bytes`, output
        longer than that is refused (QueryRefused naming QUERY_MAX_BYTES) before it is copied or decoded.

        chDB 4.4 hands what a failed query (a time-out) wrote to a later result of the same session,
        sometimes after the failure has returned: a throwaway query right after it may come back clean
        and the next real one carry it (measured: 5 /query in 5 queued behind a time-out, with a
        `SELECT 1` drain in between). Closing the session instead shuts chDB's engine down for the
        other lanes. So a result is framed by two markers of its own — `SELECT '<nonce>-1'` before,
        `SELECT '<nonce>-2'` after, in one call — and only what lies between them is read: anything
        earlier is someone else's. The query lane frames every call; the others for a while after a
        failure, and whenever their output is not one JSON document. A framed result that is still
        not one document is read once more, then given up as StoreUnavailable."""
        try:
            sess = self._open()
        except (RuntimeError, OSError) as exc:
            raise StoreUnavailable(f"chDB at {self.path}: {_message(exc)}") from exc
        if fmt != "JSONCompact":
            self._execute(sess, sql, params, fmt)
            return None
        if not self.framed and time.monotonic() - self._tainted_at > TAINT_S:
            body = self._output(sess, sql, params, max_bytes)
            try:
                return _one_document(body)
            except jsonx.NotJSON:
                self._tainted_at = time.monotonic()  # another query's output came first: read again, framed
        for _attempt in range(2):
            nonce = uuid.uuid4().hex  # hex digits only: safe in the text
            # newlines: the statement may end in a comment; its own `;` was taken off by the check
            body = self._output(sess, f"SELECT '{nonce}-1' FORMAT CSV;\n{sql}\n;\nSELECT '{nonce}-2' FORMAT CSV",
                                params, max_bytes)
            try:
                return _one_document(_framed(body, nonce))
            except jsonx.NotJSON as exc:
                self._tainted_at = time.monotonic()
                failure = exc
        raise StoreUnavailable(f"chDB at {self.path} returned output that is not one JSON document twice "
                               f"({failure})")

    def run(self, sql: str, params: dict | None = None, fmt: str = "JSONCompact", max_bytes: int | None = None) -> Any:
        return self.call(self.sql, sql, params, fmt, max_bytes)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the session once the lane's current call is done, waiting at most `timeout_s`: a query
        stuck in the engine must not hold up a shutdown (the process exit ends it)."""
        if self.session is not None:
            session, self.session = self.session, None
            with gevent.Timeout(timeout_s, False):
                self.call(session.close)
                return
            log.warning("chDB: a call on %s did not finish within %g s; closing without it", self.path, timeout_s)


class EmbeddedStore:
    """chDB under DATA_DIR/chdb on three sessions, each on a thread of its own, so no call blocks the
    hub and a long /query never holds up an insert:

    - write: the schema, inserts and the relay's own metadata (every right);
    - read: /history, resume and metadata reads (readonly=1);
    - query: /query text and enrichment (readonly=1, the /query limits set before it).

    chDB runs every query as a user with every grant, so readonly=1 on the
    sessions that take caller text is the engine's line; handlers/sql.py's text
    check is the second, and the only one for the ordinary function file(),
    which chDB (like clickhouse-local) runs on any host path even read-only.
    """

    backend = "chdb"

    def __init__(self, data_dir: str, db: str = "relayhouse", max_rows_to_read: int = 100_000_000,
                 max_memory_bytes: int = 2_000_000_000, query_timeout_s: float = 10.0,
                 query_max_rows: int = 10_000):
        if not DATABASE_NAME.match(db):
            raise StoreError(f"bad database name {db!r}")
        self.path = os.path.join(data_dir, "chdb")
        self.db = db
        self.query_timeout_s = query_timeout_s
        self.query_max_rows = query_max_rows
        limits = {"max_execution_time": max(1, int(round(query_timeout_s))),
                  "max_rows_to_read": max_rows_to_read, "max_memory_usage": max_memory_bytes}
        self._write = Lane(self.path)
        self._read = Lane(self.path, readonly_setup(limits))
        # USE: unqualified names are the relay's tables, as on the server (whose /query logs into
        # the relay's database); chDB's own current database is `default`
        self._query = Lane(self.path, (f"USE {db}", *readonly_setup({
            **limits, "max_result_rows": query_max_rows + 1, "result_overflow_mode": "break",
            "output_format_json_quote_decimals": 1})), framed=True)
        self._table_functions: frozenset[str] | None = None
        self._powers: list[str] | None = None
        self._query_waiting = 0  # /query callers waiting for (or in) the query lane
        self._query_turn = gevent.lock.Semaphore(1)  # held from a /query's start until its thread is done

    def _select(self, sql: str, params: dict | None = None) -> list[list]:
        return self._read.run(sql, params)["data"]

    def ensure_schema(self) -> None:
        for statement in schema_statements(self.db):
            self._write.run(statement, None, "CSV")

    def insert(self, events: list[Event]) -> None:
        self._write.call(self._insert, event_columns(events))

    def _insert(self, columns: list[list]) -> None:
        rows = dict(zip(EVENT_COLUMNS, columns, strict=True))  # noqa: F841  (read by chDB's Python() table function)
        names = ", ".join(EVENT_COLUMNS)
        self._write.sql(f"INSERT INTO {self.db}.events ({names}) SELECT {names} FROM Python(rows)", None, "CSV")

    def max_seq(self) -> int:
        return int(self._write.run(f"SELECT max(seq) FROM {self.db}.events")["data"][0][0])

    def min_seq(self) -> int:
        return int(self._select(f"SELECT min(seq) FROM {self.db}.events")[0][0])

    def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        # values as literals (render_params, as the server backend and /query have them), not chDB's
        # query parameters: concurrent resumes failed with "Substitution 'first' is not set" (an audit,
        # 3 of 30 beside a publishing load) and reported stored events missing
        return [tuple(row) for row in self._select(render_params(sql, params))]

    def select_events(self, clauses: str, params: dict[str, Any]) -> list[Event]:
        """Events from `WHERE ... ORDER BY ... LIMIT ...` clauses (values only in params)."""
        return rows_to_events(self.fetch(EVENT_SELECT.format(db=self.db) + clauses, params))

    def query(self, sql: str, timeout_s: float, max_rows: int, max_bytes: int | None = None) -> QueryResult:
        """Caller text on the readonly=1 query session, whose limits were set when it opened
        (QUERY_TIMEOUT_S and the rest); `timeout_s` and `max_rows` can only tighten them. A result
        whose JSON text is longer than `max_bytes` is refused before it is decoded (the engine's
        max_result_bytes cannot do it: it shares result_overflow_mode with the row limit, which must
        `break` so that a long result comes back cut with `truncated`, and it does not count a
        constant column — `SELECT repeat('x', 1000000) FROM numbers(500)` passes any limit)."""
        timeout_s = min(timeout_s, self.query_timeout_s)
        max_rows = min(max_rows, self.query_max_rows)
        if self._query_waiting >= QUERY_WAITING_MAX:
            raise StoreUnavailable(f"the /query session is busy: {self._query_waiting} queries wait for it; "
                                   "try again shortly")
        started = time.perf_counter()
        self._query_waiting += 1
        try:
            # The session's queries run one at a time (chDB serializes them itself): a query waits for its
            # turn at most timeout_s, then runs at most timeout_s (the engine's limit). One that started late
            # ran its whole time after its caller had a 504, so timed-out queries held the session one after
            # another and a `SELECT 1` behind them got 504s for half a minute (an outside audit). Now a query
            # never starts once its caller stopped waiting, and the next starts only when it has ended.
            with gevent.Timeout(2 * timeout_s + 2, QueryTimedOut(f"query exceeded {timeout_s:g} s")):
                result = call_in_turn(self._query_turn, timeout_s, self._query.sql, sql, None, "JSONCompact",
                                      max_bytes, pool=self._query.pool, waited=QueryTimedOut(
                                          f"waited {timeout_s:g} s (QUERY_TIMEOUT_S) for the /query session, which "
                                          "other queries held, and was not run"))
        finally:
            self._query_waiting -= 1
        elapsed_ms = (time.perf_counter() - started) * 1000
        columns = [(m["name"], m["type"]) for m in result.get("meta", [])]
        rows = [list(r) for r in result.get("data", [])[:max_rows + 1]]
        truncated = len(rows) > max_rows
        rows = rows[:max_rows]
        # decimals arrive quoted (exact); json_safe_rows decides number or text like the server's
        for i, (_name, type_) in enumerate(columns):
            if type_.startswith(("Decimal", "Nullable(Decimal")):
                for row in rows:
                    if isinstance(row[i], str):
                        row[i] = Decimal(row[i])
            elif FLOAT_TYPE.fullmatch(type_):
                # chDB writes a whole float without its point (1e17 as 100000000000000000), read back as an
                # integer, which past 2^53 became a string: a Float64 column mixed numbers and strings where
                # the server's driver gives floats (an outside audit)
                for row in rows:
                    row[i] = _as_float(row[i])
        return QueryResult(columns, json_safe_rows(columns, [tuple(r) for r in rows]), truncated, elapsed_ms)

    def table_functions(self) -> frozenset[str]:
        """The engine's own list of table functions (system.table_functions), read once."""
        if self._table_functions is None:
            self._table_functions = frozenset(row[0] for row in self._select("SELECT name FROM system.table_functions"))
        return self._table_functions

    def database_names(self) -> frozenset[str]:
        """The engine's databases now (/query refuses names qualified by any but the relay's)."""
        return frozenset(row[0] for row in self._select("SELECT name FROM system.databases"))

    def query_powers(self) -> list[str]:
        """What the /query session can do that it must not (handlers.sql.power_probes); [] when restricted."""
        if self._powers is None:
            self._powers = probe_powers(lambda sql: self._query.run(sql, None, "CSV"), self.db)
            if self._powers:
                log.error("/query is refused: its chDB session %s", "; ".join(self._powers))
        return self._powers

    def get_meta(self, key: str) -> str | None:
        rows = self._select(f"SELECT argMax(value, version) FROM {self.db}.relay_meta WHERE key = {{key:String}} GROUP BY key",
                            {"key": key})
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write.call(self._set_meta, key, value)

    def _set_meta(self, key: str, value: str) -> None:
        meta = {"key": [key], "value": [value], "version": [time.time_ns()]}  # noqa: F841  (read by Python())
        self._write.sql(f"INSERT INTO {self.db}.relay_meta (key, value, version) SELECT key, value, version FROM Python(meta)",
                        None, "CSV")

    def close(self) -> None:
        for lane in (self._query, self._read, self._write):
            lane.close()


__all__ = ["EmbeddedStore", "StoreError"]
