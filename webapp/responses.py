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


def events_response(events: Iterable[Event]) -> Response:
    body = b'{"events":[' + b",".join(ev.json for ev in events) + b"]}"
    return Response(body, mimetype=JSON)


def event_response(event: Event) -> Response:
    return Response(event.json, mimetype=JSON)
