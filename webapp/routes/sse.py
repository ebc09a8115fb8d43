"""/sse: the same stream as /ws as Server-Sent Events, resumable with Last-Event-ID."""

import logging

from flask import Blueprint, Response, request

from handlers.events import Event
from handlers.params import stream_params
from handlers.protocol import sse_closing, sse_conflated, sse_events, sse_gap, sse_slow
from handlers.topics import compile_patterns
from webapp.auth import CLIENT, TopicsForbidden, access, request_scope, scoped_stream
from webapp.responses import json_error
from webapp.routes import runtime
from webapp.sockets import Conflating, StreamClient, StreamResponse, chunk_data, http_chunk, server_socket
from webapp.streams import fill_from_store, open_stream
from webapp.wire import WireSocket, size_send_buffer

log = logging.getLogger(__name__)
bp = Blueprint("sse", __name__)

RETRY_MS = b"retry: 1000\n\n"
EVENT_STREAM = "text/event-stream"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SseClient(Conflating, StreamClient):
    """One /sse connection: bounded writes like /ws (webapp/sockets.py), held by the keeper once its
    response head is out."""

    kind = "sse"
    __slots__ = ("max_hz", "on_slow", "carried", "held_latest", "held_thinned",
                 "held_dropped")
    closing_message = staticmethod(sse_closing)

    def __init__(self, wire: WireSocket, rt, matcher, max_hz: float | None = None, on_slow: str = "close"):
        super().__init__(wire, rt, matcher)
        self.init_delivery(max_hz, on_slow)  # §12: the hub groups clients by patterns and rate
        self.start_hold()  # until its head is out (`pending`)

    def encode(self, events: list[Event], conflated: int = 0) -> bytes:
        body = sse_events(events)
        if conflated:  # a release comes at most once per interval, and so does this message
            body = sse_conflated(conflated) + body
        return http_chunk(body)

    def tell_slow(self, mode: str) -> None:
        self.send(sse_slow(mode))

    def deliver(self, frame: bytes, n_events: int) -> None:
        if self.pending is not None:  # the head is not out yet
            if self.held_latest is not None:  # on_slow=conflate: newest per topic, kept beside the frames
                if self.absorb_held():
                    return
                if self.pending_events + n_events > self.max_events or self.pending_bytes + len(frame) > self.max_bytes:
                    self.pending, self.pending_events, self.pending_bytes, self.held_dropped = [], 0, 0, True
                    return  # dropped: their newest values go out with the head
            super().deliver(frame, n_events)
            return
        if not self.chunked:
            frame = chunk_data(frame)
        if self.carried is None:  # the usual case, once per client per flush: no tracking
            self.write_bounded(frame, n_events)
        else:
            self.write_tracked(frame, n_events)

    def slow(self, n_events: int = 0, frame: bytes | None = None) -> None:
        if not self.conflate_instead(frame):
            super().slow(n_events)

    def waited(self, pending: list[tuple[bytes, int]]) -> list[bytes]:
        """Past its bound before its head went out (on_slow=conflate): the newest values of what it missed,
        between `slow` conflated and live, instead of the frames."""
        if not self.held_dropped or self.closed:
            self.held_latest = None  # within its bound: the frames themselves go out
            return super().waited(pending)
        events, conflated = self.newest_held()
        # written with the head, never dropped as an event frame: a later slow spell starts after it
        release = [chunk_data(self.encode(events, conflated))] if events else []
        return [sse_slow("conflated"), *release, sse_slow("live")]


@bp.get("/sse")
@access(CLIENT)
def stream():
    rt = runtime()
    if not rt.ready.is_set() or rt.shutting_down:
        return json_error(503, "the relay is starting or stopping: retry in a moment")
    params = stream_params(request.args, request.headers.get("Last-Event-ID"),
                           rt.settings.snapshot_default, rt.settings.snapshot_max)
    params, refused = scoped_stream(params, request.args, request_scope(request, rt.settings))
    if refused:
        raise TopicsForbidden(refused)
    if request.method == "HEAD":  # the head a GET would get: no body, no client held open
        head = Response(status=200, mimetype=EVENT_STREAM, headers=STREAM_HEADERS)
        head.automatically_set_content_length = False  # a stream has no length
        return head
    sock = server_socket(request.environ)
    if sock is None:
        return json_error(500, "no socket in the WSGI environment (run under gunicorn)")
    size_send_buffer(sock, params.on_slow, rt.send_buffer_cap)
    client = SseClient(WireSocket(sock), rt, compile_patterns(params.topics), params.max_hz, params.on_slow)
    if params.since is not None and not rt.snapshots.wait_for_room(client.wire.peer_gone):
        rt.metrics.bound_hits.labels("snapshot_queue").inc()
        busy = json_error(503, "this worker holds SNAPSHOT_QUEUE_MAX_BYTES of resumes' snapshots for its clients: "
                               "retry in a moment")
        busy.headers["Retry-After"] = "1"
        return busy
    # Snapshot and registration without a yield between them (see streams.py);
    # live events wait in the client while older ones come from the store.
    opening = open_stream(rt, params, client.matcher)
    client.after_seq = opening.last_seq
    rt.hub.add(client)
    opening = fill_from_store(rt, opening, client.matcher, lambda: client.closed or client.wire.peer_gone())
    if client.closed:  # closed as slow while it waited: its goodbye, not a gap the store could have filled
        return StreamResponse(client, RETRY_MS, mimetype=EVENT_STREAM, headers=STREAM_HEADERS)
    first = RETRY_MS + (sse_gap(opening.missing) if opening.missing else b"") + sse_events(opening.events)
    return StreamResponse(client, first, mimetype=EVENT_STREAM, headers=STREAM_HEADERS)
