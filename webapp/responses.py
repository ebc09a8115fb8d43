"""JSON responses: bodies built with orjson, events spliced in from their prebuilt JSON."""

from typing import Any, Iterable

from flask import Response

from handlers import jsonx
from handlers.events import Event

JSON = "application/json"


def json_response(value: Any, status: int = 200) -> Response:
    return Response(jsonx.dumps(value), status=status, mimetype=JSON)


def json_error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def events_response(events: Iterable[Event], missing: list[tuple[int, int]] | None = None) -> Response:
    """`{"events": [...]}`, and `"missing": [[from, to], ...]` when given (seq ranges the store lacks)."""
    body = b'{"events":[' + b",".join(ev.json for ev in events) + b"]"
    if missing:
        body += b',"missing":[' + b",".join(b"[%d,%d]" % (lo, hi) for lo, hi in missing) + b"]"
    return Response(body + b"}", mimetype=JSON)


def event_response(event: Event) -> Response:
    return Response(event.json, mimetype=JSON)
