"""/sse: the same stream as /ws as Server-Sent Events, resumable with Last-Event-ID."""

import logging
import socket
from collections import deque

from flask import Blueprint, Response, request
from gevent.event import Event as Signal

from handlers.events import Event
from handlers.params import stream_params
from handlers.protocol import SSE_KEEPALIVE, sse_closing, sse_conflated, sse_events, sse_gap, sse_slow
from handlers.topics import compile_patterns
from webapp.auth import CLIENT, TopicsForbidden, access, request_scope, scoped_stream
from webapp.responses import json_error
from webapp.routes import runtime
from webapp.streams import fill_from_store, open_stream
from webapp.wire import limit_send_buffer

log = logging.getLogger(__name__)
bp = Blueprint("sse", __name__)

RETRY_MS = b"retry: 1000\n\n"


class SseClient:
    """One /sse connection: a bounded queue drained by its response generator."""

    kind = "sse"

    def __init__(self, matcher, rt, max_hz: float | None = None, on_slow: str = "close"):
        self.matcher = matcher
        self.max_hz = max_hz  # §12: the hub groups clients by patterns and rate
        self.on_slow = on_slow
        self.after_seq = 0
        self.rt = rt
        self.max_events = rt.settings.ws_queue_max_events
        self.max_bytes = rt.settings.ws_queue_max_bytes
        self._queue: deque[tuple[bytes, int]] = deque()  # (chunk, events in it)
        self._queued_bytes = 0
        self._queued_events = 0
        self._queued_through = self._taken_through = 0  # the seq covered by what is queued / taken
        self._ready = Signal()
        self.closed = False

    def encode(self, events: list[Event], conflated: int = 0) -> bytes:
        if conflated:  # a release comes at most once per interval, and so does this message
            return sse_conflated(conflated) + sse_events(events, self.rt.stream_epoch)
        return sse_events(events, self.rt.stream_epoch)

    def below_half(self) -> bool:
        return self._queued_events * 2 <= self.max_events and self._queued_bytes * 2 <= self.max_bytes

    def tell_slow(self, mode: str) -> None:
        self._put(sse_slow(mode), 0)

    def deliver(self, frame: bytes, n_events: int) -> None:
        if self._queue and (self._queued_bytes + len(frame) > self.max_bytes
                            or self._queued_events + n_events > self.max_events):
            if self.on_slow == "conflate":
                # conflate what it has not taken either: drop the queued events (keep other messages),
                # read them back from the cache, newest per topic
                self._queue = deque(entry for entry in self._queue if not entry[1])
                self._queued_bytes = sum(len(chunk) for chunk, _ in self._queue)
                self._queued_events = 0
                self._queued_through = self._taken_through
                rt = self.rt
                rt.hub.conflate_slow(self, rt.cache.events_after(self._taken_through, rt.now_ms(), self.matcher))
                return
            self.rt.metrics.slow_consumers.labels(self.kind).inc()
            self.rt.metrics.queue_drops.labels(self.kind).inc(self._queued_events + n_events)
            log.info("closing a slow /sse consumer (%d events behind)", self._queued_events)
            self.close("slow_consumer", 0)
            return
        self._put(frame, n_events)

    def _put(self, chunk: bytes, n_events: int) -> None:
        self._queue.append((chunk, n_events))
        self._queued_bytes += len(chunk)
        self._queued_events += n_events
        if n_events:
            self._queued_through = self.rt.hub.last_seq
        self._ready.set()

    def close(self, reason: str, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.rt.hub.remove(self)
        self._queue.clear()
        self._queue.append((sse_closing(reason), 0))
        self._ready.set()

    def take(self, timeout_s: float) -> bytes | None:
        """Everything queued as one chunk, or None after `timeout_s` of quiet."""
        if not self._queue and not self._ready.wait(timeout_s):
            return None
        self._ready.clear()
        chunk = b"".join(chunk for chunk, _ in self._queue)
        self._queue.clear()
        self._queued_bytes = self._queued_events = 0
        self._taken_through = self._queued_through
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
    params, refused = scoped_stream(params, request.args, request_scope(request, rt.settings))
    if refused:
        raise TopicsForbidden(refused)
    client = SseClient(compile_patterns(params.topics), rt, params.max_hz, params.on_slow)
    # Snapshot and registration without a yield between them (see streams.py);
    # live events queue in the client while older ones come from the store.
    opening = open_stream(rt, params, client.matcher)
    client.after_seq = client._queued_through = client._taken_through = opening.last_seq
    rt.hub.add(client)
    opening = fill_from_store(rt, opening, client.matcher)
    first = RETRY_MS + (sse_gap(opening.missing) if opening.missing else b"") + sse_events(opening.events, opening.epoch)
    keepalive_s = rt.settings.sse_keepalive_s
    sock = request.environ.get("gunicorn.socket")
    if params.on_slow == "conflate" and sock is not None:
        limit_send_buffer(sock)

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
