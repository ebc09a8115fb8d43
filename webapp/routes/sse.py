"""/sse: the same stream as /ws as Server-Sent Events, resumable with Last-Event-ID."""

import logging
import socket
from collections import deque

from flask import Blueprint, Response, request
from gevent.event import Event as Signal

from handlers.events import Event
from handlers.params import stream_params
from handlers.protocol import SSE_KEEPALIVE, sse_closing, sse_events, sse_gap
from handlers.topics import compile_patterns
from webapp.auth import CLIENT, access
from webapp.responses import json_error
from webapp.routes import runtime
from webapp.streams import fill_from_store, open_stream

log = logging.getLogger(__name__)
bp = Blueprint("sse", __name__)

RETRY_MS = b"retry: 1000\n\n"


class SseClient:
    """One /sse connection: a bounded queue drained by its response generator."""

    kind = "sse"

    def __init__(self, matcher, rt):
        self.matcher = matcher
        self.after_seq = 0
        self.rt = rt
        self.max_events = rt.settings.ws_queue_max_events
        self.max_bytes = rt.settings.ws_queue_max_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._queued_events = 0
        self._ready = Signal()
        self.closed = False

    def encode(self, events: list[Event]) -> bytes:
        return sse_events(events, self.rt.stream_epoch)

    def deliver(self, frame: bytes, n_events: int) -> None:
        if self._queue and (self._queued_bytes + len(frame) > self.max_bytes
                            or self._queued_events + n_events > self.max_events):
            self.rt.metrics.slow_consumers.labels(self.kind).inc()
            self.rt.metrics.queue_drops.labels(self.kind).inc(self._queued_events + n_events)
            log.info("closing a slow /sse consumer (%d events behind)", self._queued_events)
            self.close("slow_consumer", 0)
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self._queued_events += n_events
        self._ready.set()

    def close(self, reason: str, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.rt.hub.remove(self)
        self._queue.clear()
        self._queue.append(sse_closing(reason))
        self._ready.set()

    def take(self, timeout_s: float) -> bytes | None:
        """Everything queued as one chunk, or None after `timeout_s` of quiet."""
        if not self._queue and not self._ready.wait(timeout_s):
            return None
        self._ready.clear()
        chunk = b"".join(self._queue)
        self._queue.clear()
        self._queued_bytes = self._queued_events = 0
        return chunk


def end_connection(sock) -> None:
    """The relay ended the stream (shutdown, slow consumer): no keep-alive wait for
    another request on this connection. Reads stop; the final chunk still goes out."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # the peer is already gone


@bp.get("/sse")
@access(CLIENT)
def stream():
    rt = runtime()
    if not rt.ready.is_set() or rt.shutting_down:
        return json_error(503, "the relay is starting or stopping: retry in a moment")
    params = stream_params(request.args, request.headers.get("Last-Event-ID"),
                           rt.settings.snapshot_default, rt.settings.snapshot_max)
    client = SseClient(compile_patterns(params.topics), rt)
    # Snapshot and registration without a yield between them (see streams.py);
    # live events queue in the client while older ones come from the store.
    opening = open_stream(rt, params, client.matcher)
    client.after_seq = opening.last_seq
    rt.hub.add(client)
    opening = fill_from_store(rt, opening, client.matcher)
    first = RETRY_MS + (sse_gap(opening.missing) if opening.missing else b"") + sse_events(opening.events, opening.epoch)
    keepalive_s = rt.settings.sse_keepalive_s
    sock = request.environ.get("gunicorn.socket")

    def body():
        try:
            yield first
            while True:
                chunk = client.take(keepalive_s)
                yield SSE_KEEPALIVE if chunk is None else chunk
                if client.closed:  # the closing message was in that chunk
                    end_connection(sock)
                    return
        finally:
            client.closed = True
            rt.hub.remove(client)

    return Response(body(), mimetype="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
