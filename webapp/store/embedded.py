"""The embedded chDB backend (the default): the only importer of chdb. Every call runs in one worker thread."""

import logging
import os
import re
import time
from decimal import Decimal
from typing import Any

import gevent.threadpool

from handlers import jsonx
from handlers.events import Event
from handlers.sql import json_safe_rows, to_server_params
from webapp.store.base import (
    EVENT_COLUMNS,
    EVENT_SELECT,
    QueryRefused,
    QueryResult,
    QueryTimedOut,
    StoreError,
    StoreUnavailable,
    event_columns,
    rows_to_events,
    schema_statements,
)
from webapp.threads import call_in_thread

log = logging.getLogger(__name__)
CODE = re.compile(r"Code: (\d+)")
TIMEOUT_EXCEEDED = 159


def _message(exc: Exception) -> str:
    return str(exc).split("Stack trace")[0].strip()


class EmbeddedStore:
    """chDB under DATA_DIR/chdb. chDB calls block their thread, so they run in a
    one-thread pool: the gevent hub never waits, and calls are serialized."""

    backend = "chdb"

    def __init__(self, data_dir: str, db: str = "relayhouse", max_rows_to_read: int = 100_000_000,
                 max_memory_bytes: int = 2_000_000_000):
        self.path = os.path.join(data_dir, "chdb")
        self.db = db
        self.max_rows_to_read = max_rows_to_read
        self.max_memory_bytes = max_memory_bytes
        self._pool = gevent.threadpool.ThreadPool(1)
        self._session = None

    def _call(self, fn, *args):
        return call_in_thread(fn, *args, pool=self._pool)

    def _open(self):
        if self._session is None:
            from chdb import session  # imported on first use: chdb is large and only this backend needs it

            os.makedirs(self.path, exist_ok=True)
            self._session = session.Session(self.path)
        return self._session

    def _sql(self, sql: str, params: dict | None = None, fmt: str = "JSONCompact") -> Any:
        """Run in the pool thread; map chDB's errors onto the store's."""
        sess = None
        try:
            sess = self._open()
            result = sess.query(sql, fmt, params=params) if params else sess.query(sql, fmt)
        except RuntimeError as exc:
            if sess is not None:  # opening chDB itself failed: nothing to drain
                self._drain_output(sess)
            code = CODE.search(str(exc))
            if code and int(code.group(1)) == TIMEOUT_EXCEEDED:
                raise QueryTimedOut(_message(exc)) from exc
            raise QueryRefused(_message(exc)) from exc
        except OSError as exc:
            raise StoreUnavailable(f"chDB at {self.path}: {exc}") from exc
        if fmt == "JSONCompact":
            body = result.bytes()
            return jsonx.loads(body) if body else {"meta": [], "data": []}
        return None

    @staticmethod
    def _drain_output(sess) -> None:
        # chDB 4.4 keeps what a failed query (a time-out) had already written and
        # prepends it to the next result; a throwaway query takes it away.
        try:
            sess.query("SELECT 1", "CSV")
        except RuntimeError as exc:
            log.warning("chDB: could not clear a failed query's output: %s", exc)

    def _select(self, sql: str, params: dict | None = None) -> list[list]:
        return self._call(self._sql, sql, params)["data"]

    def ensure_schema(self) -> None:
        for statement in schema_statements(self.db):
            self._call(self._sql, statement, None, "CSV")

    def insert(self, events: list[Event]) -> None:
        self._call(self._insert, event_columns(events))

    def _insert(self, columns: list[list]) -> None:
        rows = dict(zip(EVENT_COLUMNS, columns, strict=True))  # noqa: F841  (read by chDB's Python() table function)
        names = ", ".join(EVENT_COLUMNS)
        self._sql(f"INSERT INTO {self.db}.events ({names}) SELECT {names} FROM Python(rows)", None, "CSV")

    def max_seq(self) -> int:
        return int(self._select(f"SELECT max(seq) FROM {self.db}.events")[0][0])

    def min_seq(self) -> int:
        return int(self._select(f"SELECT min(seq) FROM {self.db}.events")[0][0])

    def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        server_sql, server_params = to_server_params(sql, params)
        return [tuple(row) for row in self._select(server_sql, server_params)]

    def select_events(self, clauses: str, params: dict[str, Any]) -> list[Event]:
        """Events from `WHERE ... ORDER BY ... LIMIT ...` clauses (values only in params)."""
        return rows_to_events(self.fetch(EVENT_SELECT.format(db=self.db) + clauses, params))

    def query(self, sql: str, timeout_s: float, max_rows: int) -> QueryResult:
        limits = (f"readonly = 2, max_execution_time = {max(1, int(round(timeout_s)))}, "
                  f"max_result_rows = {max_rows + 1}, result_overflow_mode = 'break', "
                  f"max_rows_to_read = {self.max_rows_to_read}, max_memory_usage = {self.max_memory_bytes}, "
                  "output_format_json_quote_decimals = 1")
        started = time.perf_counter()
        # chDB has no per-call settings argument: the limits ride on the statement,
        # which check_read_only_sql guarantees is one statement without its own SETTINGS.
        result = self._call(self._sql, f"{sql}\nSETTINGS {limits}")
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
        return QueryResult(columns, json_safe_rows(columns, [tuple(r) for r in rows]), truncated, elapsed_ms)

    def get_meta(self, key: str) -> str | None:
        rows = self._select(f"SELECT argMax(value, version) FROM {self.db}.relay_meta WHERE key = {{key:String}} GROUP BY key",
                            {"key": key})
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._call(self._set_meta, key, value)

    def _set_meta(self, key: str, value: str) -> None:
        meta = {"key": [key], "value": [value], "version": [time.time_ns()]}  # noqa: F841  (read by Python())
        self._sql(f"INSERT INTO {self.db}.relay_meta (key, value, version) SELECT key, value, version FROM Python(meta)",
                  None, "CSV")

    def close(self) -> None:
        if self._session is not None:
            self._call(self._session.close)
            self._session = None


__all__ = ["EmbeddedStore", "StoreError"]
