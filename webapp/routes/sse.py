"""/sse: the same stream as /ws as Server-Sent Events, resumable with Last-Event-ID."""

import logging

from flask import Blueprint, request

from handlers.events import Event
from handlers.params import stream_params
from handlers.protocol import sse_closing, sse_events, sse_gap
from handlers.topics import compile_patterns
from webapp.auth import CLIENT, access
from webapp.responses import json_error
from webapp.routes import runtime
from webapp.sockets import StreamClient, StreamResponse, http_chunk, server_socket
from webapp.streams import fill_from_store, open_stream
from webapp.wire import WireSocket

log = logging.getLogger(__name__)
bp = Blueprint("sse", __name__)

RETRY_MS = b"retry: 1000\n\n"


class SseClient(StreamClient):
    """One /sse connection: bounded writes like /ws (webapp/sockets.py), held by the keeper once its
    response head is out."""

    kind = "sse"
    __slots__ = ()
    closing_message = staticmethod(sse_closing)

    @staticmethod
    def encode(events: list[Event]) -> bytes:
        return http_chunk(sse_events(events))


@bp.get("/sse")
@access(CLIENT)
def stream():
    rt = runtime()
    if not rt.ready.is_set() or rt.shutting_down:
        return json_error(503, "the relay is starting or stopping: retry in a moment")
    params = stream_params(request.args, request.headers.get("Last-Event-ID"),
                           rt.settings.snapshot_default, rt.settings.snapshot_max)
    sock = server_socket(request.environ)
    if sock is None:
        return json_error(500, "no socket in the WSGI environment (run under gunicorn)")
    client = SseClient(WireSocket(sock), rt, compile_patterns(params.topics))
    # Snapshot and registration without a yield between them (see streams.py);
    # live events wait in the client while older ones come from the store.
    opening = open_stream(rt, params, client.matcher)
    client.after_seq = opening.last_seq
    rt.hub.add(client)
    opening = fill_from_store(rt, opening, client.matcher)
    first = RETRY_MS + (sse_gap(opening.missing) if opening.missing else b"") + sse_events(opening.events)
    return StreamResponse(client, first, mimetype="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
