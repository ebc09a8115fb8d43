"""HTTP and WebSocket routes, one blueprint per module."""

from flask import Response, current_app, request

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


def not_json_content() -> Response | None:
    """The 400 for a request body that is not declared JSON (None when it is).

    A page on any origin can make a browser send a form or `text/plain` POST
    without asking first (no CORS preflight); `application/json` it may send
    only after a preflight, which the relay grants to CORS_ORIGINS alone. An
    outside audit published events through a page's `<form enctype="text/plain">`
    (admin by loopback peer, ADMIN_TOKEN unset): bodies are JSON-typed or refused."""
    mimetype = request.mimetype
    if mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json")):
        return None
    return json_error(400, f"the body must be sent as Content-Type: application/json "
                           f"(got {request.content_type[:64] if request.content_type else 'none'!r})")
