"""HTTP and WebSocket routes, one blueprint per module."""

from flask import Response, current_app

from webapp.responses import json_error
from webapp.store.base import QueryTimedOut, StoreError, StoreUnavailable

NO_STORE = "no store: persistence is off (CLICKHOUSE_URL=none, or a cluster without a ClickHouse server)"


def runtime():
    """The per-worker Runtime this app was built with."""
    return current_app.extensions["relayhouse"]


def store_failure(exc: StoreError, refused_status: int = 400) -> Response:
    """The JSON answer for a failed store call, counted by kind: 504 time-out, 503 unreachable,
    `refused_status` for what ClickHouse refused (400 for user SQL, 500 for the relay's own)."""
    if isinstance(exc, QueryTimedOut):
        kind, status, message = "timeout", 504, f"query timed out: {exc}"
    elif isinstance(exc, StoreUnavailable):
        kind, status, message = "unavailable", 503, str(exc)
    else:
        kind, status, message = "clickhouse", refused_status, str(exc)
    runtime().metrics.query_errors.labels(kind).inc()
    return json_error(status, message)
