"""What /ws, /sse and the Polygon routes share: taking over the socket, a client the hub can write
to within bounds, closing it with a reason, handing the connection to the keeper (webapp/conn.py)
so that its request greenlet can end, and the handler's last steps.

The routes differ in their protocol (handlers/protocol.py and handlers/polygon.py),
not in how bytes reach a socket, so that part lives here once.
"""

from __future__ import annotations

import _socket
import logging
import time
from collections import deque

import gevent
import gevent.event
from flask import Response, current_app, g
from simple_websocket import ConnectionClosed

from handlers.conflate import Latest
from handlers.events import Event
from handlers.handshake import upgrade_refusal
from handlers.protocol import SSE_KEEPALIVE, ws_frame
from webapp import accesslog
from webapp.conn import HeldStream, HeldWebSocket, Keeper
from webapp.responses import json_error
from webapp.wire import WireSocket, size_send_buffer

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_INTERNAL_ERROR = 1011


class NoReader:
    """simple-websocket's reader "thread", never run: a held connection is read by the keeper's
    one reader greenlet (webapp/conn.py), not by a greenlet of its own."""

    __slots__ = ("name",)

    def __init__(self, target):
        self.name = "ws-reader(_thread)"

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return False


def serve_sockets_lightly(app) -> None:
    """Every flask-sock socket skips the library's reader greenlet and uses gevent's Event
    (threading.Event is a Condition with its own lock and deque per connection)."""
    options = app.config.setdefault("SOCK_SERVER_OPTIONS", {})
    options.setdefault("thread_class", NoReader)
    options.setdefault("event_class", gevent.event.Event)


def keeper() -> Keeper:
    """This worker's keeper of held connections (made on first use, in the worker)."""
    extensions = current_app.extensions
    found = extensions.get("relayhouse.held")
    if found is None:
        s = extensions["relayhouse"].settings
        found = extensions["relayhouse.held"] = Keeper(
            ping_interval_s=s.ws_ping_interval_s, keepalive_s=s.sse_keepalive_s,
            max_message_bytes=s.ws_max_message_bytes, close_timeout_s=s.slow_close_timeout_s)
    return found


def server_socket(environ):
    """The connection's socket in the WSGI environment (gunicorn's, or werkzeug's), or None."""
    for key in ("gunicorn.socket", "werkzeug.socket"):
        if key in environ:
            return environ[key]
    return None


def take_socket(rt, environ, on_slow: str = "close"):
    """Before flask-sock's handshake: refuse what cannot be upgraded, refuse deflate, own the socket.
    `on_slow` (/ws): its send buffer is sized for it (webapp/wire.py size_send_buffer).

    Returns an error response, or None with `g.wire` set to the WireSocket every
    write to this connection goes through (the library's pongs and closes too).
    """
    refusal = upgrade_refusal(environ.get("SERVER_PROTOCOL", ""), environ.get("HTTP_UPGRADE", ""),
                              environ.get("HTTP_CONNECTION", ""), environ.get("HTTP_SEC_WEBSOCKET_VERSION"),
                              environ.get("HTTP_SEC_WEBSOCKET_KEY"))
    if refusal is not None:
        response = json_error(refusal.status, refusal.message)
        response.headers.extend(refusal.headers)
        return response
    if rt.shutting_down:
        return json_error(503, "the relay is shutting down")
    if not rt.ready.is_set():
        return json_error(503, "the relay is starting: retry in a moment")
    # Broadcast frames are shared by every client, so per-client compression is
    # refused: simple-websocket would accept any offer (3.3x CPU, 15x p99).
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    for key in ("gunicorn.socket", "werkzeug.socket"):
        if key in environ:
            environ[key] = g.wire = wire = WireSocket(environ[key])
            size_send_buffer(wire.sock, on_slow, rt.send_buffer_cap)
            wire.cork()  # the 101 and the route's first frames in one write (hold or finish uncorks)
            return None
    return json_error(500, "no socket in the WSGI environment (run under gunicorn)")


def detach_socket(wire: WireSocket):
    """Take the file descriptor from the server's socket object (whose close() then leaves it
    open) into a plain non-blocking socket that the wire writes to from now on."""
    sock = _socket.socket(fileno=wire.sock.detach())
    sock.setblocking(False)
    wire.adopt(sock)
    return sock


class SocketClient:
    """One WebSocket connection as the hub sees it: bounded writes, a slow-consumer close, a reasoned close.

    Subclasses give `kind` (the metrics label), `closing_message(reason)` (the
    frame sent before a close the relay initiates) and `encode(events)`.
    """

    kind = "socket"
    access_status = "101 Switching Protocols"  # what its access line says the client got (webapp/accesslog.py)
    __slots__ = ("ws", "wire", "rt", "matcher", "after_seq", "max_events", "max_bytes", "closed", "conn",
                 "connected_at", "access", "snapshot_end")

    def __init__(self, ws, wire: WireSocket, rt, matcher):
        self.ws = ws
        self.conn = None  # the keeper's HeldWebSocket once the route handed the connection over
        self.wire = wire
        self.rt = rt
        self.matcher = matcher
        self.after_seq = 0
        self.max_events = rt.settings.ws_queue_max_events
        self.max_bytes = rt.settings.ws_queue_max_bytes
        self.closed = False
        self.snapshot_end = 0  # where the snapshot's last byte leaves the backlog (the wire's drained_bytes)
        self.connected_at = time.monotonic()  # read by GET /clients and the access line (webapp/accesslog.py)
        self.access = accesslog.opened()  # its request's strings; None unless access lines are written

    @staticmethod
    def closing_message(reason: str) -> bytes:
        raise NotImplementedError

    def send(self, message: bytes) -> None:
        self.wire.write(ws_frame(message))

    def reply(self, message: bytes) -> None:
        """An answer to the client's own message: bounded like events (a client that sends and never reads
        would otherwise queue answers without end), and past the bound always closed: answers cannot be
        conflated."""
        self.send(message)
        self.check_bound()

    def check_bound(self) -> None:
        """Close as a slow consumer if what is queued (answers and pongs included) is past the byte bound."""
        if not self.closed and self.queued_bytes() > self.max_bytes:
            SocketClient.slow(self)

    def snapshot_written(self) -> None:
        """The snapshot is in the wire: its bytes do not count towards the bound while they drain (a resume
        may be larger than the bound on its own, and a client reading it at full speed is not slow). While
        the wire is corked (the handshake's answer, the snapshot and what waited for it go out in one
        write), the corked length up to it is noted (as -1 - length) and the mark made once the wire is
        uncorked (`hold`): what was written after the snapshot counts."""
        wire = self.wire
        self.snapshot_end = -1 - wire.corked_bytes if wire.corked else wire.drained_bytes + wire.backlog_bytes

    def snapshot_sent_with(self, after: int) -> None:
        """The snapshot went out in one write followed by `after` bytes of other frames: of what is queued,
        only the part before those is the snapshot's."""
        wire = self.wire
        self.snapshot_end = wire.drained_bytes + max(0, wire.backlog_bytes - after)

    def snapshot_left(self) -> int:
        """Bytes of the snapshot still queued here (while corked: the corked bytes up to its end)."""
        end = self.snapshot_end
        return -1 - end if end < 0 else end - self.wire.drained_bytes

    def queued_bytes(self) -> int:
        """Bytes queued for this client, the snapshot's part not counted."""
        wire = self.wire
        return wire.backlog_bytes - max(0, self.snapshot_end - wire.drained_bytes)  # (< 0 while corked: 0)

    def write_bounded(self, frame: bytes, n_events: int) -> None:
        """Write a shared frame, or close the client if it would go past its backlog bounds."""
        wire = self.wire
        if wire.backlog_bytes and (self.queued_bytes() + len(frame) > self.max_bytes
                                   or wire.backlog_weight + n_events > self.max_events):
            self.slow(n_events, frame)
            return
        wire.write(frame, n_events)

    def behind(self, n_events: int) -> int:
        """Events this client would be behind with `n_events` more."""
        return self.wire.backlog_weight + n_events

    def slow(self, n_events: int = 0, frame: bytes | None = None) -> None:
        """Past its bound with `frame` (not written): closed as a slow consumer (§3)."""
        behind = self.behind(n_events)
        self.rt.metrics.slow_consumers.labels(self.kind).inc()
        self.rt.metrics.queue_drops.labels(self.kind).inc(behind)
        log.info("closing a slow %s consumer (%d events behind)", self.kind, behind)
        self.close("slow_consumer", CLOSE_TRY_AGAIN_LATER)

    def close(self, reason: str, code: int) -> None:
        """Drop the backlog, say why, close with `code`; the handler greenlet then ends."""
        if self.closed:
            return
        self.closed = True
        self.rt.hub.remove(self)
        self.wire.discard_backlog()
        self.send(self.closing_message(reason))
        self.close_socket(code, reason)

    def close_socket(self, code: int, reason: str) -> None:
        if self.conn is not None:
            self.conn.close(code, reason)
            return
        try:
            self.ws.close(reason=code, message=reason)
        except ConnectionClosed:
            pass

    def hold(self, on_text, *, deadline_s: float | None = None, on_deadline=None) -> None:
        """Hand the connection to the keeper: from now on `on_text(message)` is called (by the
        keeper's reader greenlet) for each client message, `on_deadline()` once after
        `deadline_s`, and the route's greenlet may return without the connection closing.

        Both run in the keeper's one reader (or ticker) greenlet, shared by every held
        connection of the worker: they may yield, but other clients' messages wait meanwhile,
        so anything slow (a store query, a round trip to Redis) belongs in a greenlet of its own."""
        corked = self.wire.corked_bytes
        self.wire.uncork()
        if self.snapshot_end < 0:  # marked while corked (-1 - its end in the corked bytes)
            self.snapshot_sent_with(corked - (-1 - self.snapshot_end))
        if self.closed:
            return
        ws, self.ws = self.ws, None
        sock = detach_socket(self.wire)
        ws.connected = False  # flask-sock's close() after the route returns is then a no-op
        self.conn = HeldWebSocket(keeper(), sock, self.wire, self, ws.ws.connection, on_text, deadline_s,
                                  on_deadline)
        self.conn.keeper.take(self.conn, gevent.getcurrent())

    def finish(self) -> None:
        """The handler's last steps, however it ends: out of the hub, written out, closed.
        Nothing to do for a held connection: the keeper calls `ended()` when it closes."""
        if self.conn is not None:
            return
        self.wire.uncork()
        self.rt.hub.remove(self)
        self.closed = True
        self.wire.wait_drained(self.rt.settings.slow_close_timeout_s)
        accesslog.ended(self, self.wire.sock)

    def ended(self) -> None:
        """The keeper closed the connection (or saw it closed)."""
        self.rt.hub.remove(self)
        self.closed = True


class Conflating:
    """§12 for a client with a WireSocket: the rate it asked for (`max_hz`, the hub groups by it) and,
    with on_slow=conflate, the events each event frame still in the wire carries, so that passing the
    bound drops those frames and hands the hub their newest values instead of closing (shared by
    /ws and /sse). Mixed in before SocketClient; the subclass keeps the slots."""

    __slots__ = ()

    def init_delivery(self, max_hz: float | None, on_slow: str) -> None:
        self.max_hz = max_hz
        self.on_slow = on_slow
        # on_slow=conflate: the events of each event frame still in the wire and the `conflated` count it
        # tells (`hub.delivering`; see conflate_instead)
        self.carried: deque[tuple[list[Event], int]] | None = deque() if on_slow == "conflate" else None
        # on_slow=conflate while its snapshot is not out (`start_hold`): the newest value of each topic among
        # the frames held for it, what their rate thinned out of them, and whether they were dropped for
        # the bound (then these newest values go out instead)
        self.held_latest: Latest | None = None
        self.held_thinned = 0
        self.held_dropped = False

    def start_hold(self) -> None:
        """Its snapshot is not out yet and the hub's frames wait for it (a /ws resume from the store, an /sse
        head): with on_slow=conflate the newest value of each topic they carry is kept beside them, taken
        from each frame's own events (`hub.delivering`) as it comes. Should the frames pass the bound, they
        are dropped and these go out instead. Read back from the cache when the bound was passed, a topic
        whose only event came early in a long hold (a rate's releases fill the bound slowly) was gone
        (an outside check)."""
        if self.carried is not None:
            self.held_latest, self.held_thinned, self.held_dropped = Latest(), 0, False

    def absorb_held(self) -> bool:
        """In `deliver` while held (on_slow=conflate): keep the newest values of the frame being delivered.
        True when the frame needs no more: its frames were dropped already (the newest values stand for
        them), or it was closed for holding more topics than WS_QUEUE_MAX_EVENTS."""
        latest = self.held_latest
        events, thinned = self.rt.hub.delivering
        if events:
            latest.offer(events)
            self.held_thinned += thinned
        if len(latest) > self.max_events:
            self.held_latest = None
            self.held_too_many()
            return True
        return self.held_dropped

    def newest_held(self) -> tuple[list[Event], int]:
        """When the snapshot goes out: the newest event of each topic of the frames it held, ascending seq,
        and how many events it was due that they stand for (replaced here, or thinned by its rate). The
        client's `after_seq` moves past them. Empty once closed meanwhile."""
        latest, self.held_latest, self.held_dropped = self.held_latest, None, False
        if latest is None:
            return [], 0
        release = latest.take()
        if release.events:  # the newest event of all is its topic's newest: the last one kept
            self.after_seq = max(self.after_seq, release.events[-1].seq)
        self.rt.metrics.conflated_events.inc(release.conflated)  # a rate's own thinning was counted by the hub
        return release.events, release.conflated + self.held_thinned

    def held_too_many(self) -> None:
        """Conflated, its newest values alone (one per topic) are past its bound in events: closed as a slow
        consumer (the hub has dropped them)."""
        SocketClient.slow(self)

    def caught_up(self) -> bool:
        """Caught up enough to go live again (the hub asks while it is slow): under half its bounds, and the
        socket taking bytes — a backlog emptied by turning slow (its frames dropped) is not a client catching up."""
        wire = self.wire
        return (wire.backlog_weight * 2 <= self.max_events and self.queued_bytes() * 2 <= self.max_bytes
                and wire.has_room())

    def write_tracked(self, frame: bytes, n_events: int) -> None:
        """write_bounded for an on_slow=conflate client (`carried` is not None): noting the events the frame
        carries (`hub.delivering`: references to the list the hub built once for its group)."""
        carried = self.carried
        queued = len(carried)
        self.write_bounded(frame, n_events)
        if len(carried) == queued and not self.closed:  # written, not turned slow
            carried.append(self.rt.hub.delivering)
            # frames older than everything still queued are out: keep one entry each (and one more)
            while len(carried) > self.wire.queued_frames() + 1:
                carried.popleft()

    def conflate_instead(self, frame: bytes | None) -> bool:
        """Past the bound with `frame`: with on_slow=conflate, drop its queued event frames (replies
        and the snapshot stay) and let the hub keep it on the newest value of each topic they and
        `frame` carried (True); else False (the caller closes it). Their own events, not the cache's: a
        client of a few quiet topics has frames queued that reach back further than the cache, and a
        topic whose only event was among them was lost (as it was for a held client, see start_hold)."""
        carried = self.carried
        if frame is None or carried is None:
            return False
        dropped = self.wire.discard_backlog(events_only=True)
        frames = list(carried)[max(0, len(carried) - dropped):]
        frames.append(self.rt.hub.delivering)
        carried.clear()
        self.rt.hub.conflate_slow(self, [event for events, _ in frames for event in events],
                                  sum(told for _, told in frames))
        return True


def http_chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body (what gunicorn wrote for a streamed response)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def chunk_data(chunk: bytes) -> bytes:
    """What `http_chunk` framed (an HTTP/1.0 client gets the body without chunking)."""
    return chunk[chunk.index(b"\r\n") + 2:-2] if chunk else b""


LAST_CHUNK = b"0\r\n\r\n"


class StreamClient(SocketClient):
    """An HTTP response that stays open (/sse): a chunked body (HTTP/1.0: plain, ended by the close);
    held once its head is out.

    `encode` gives whole chunks (`http_chunk`), built once per flush and group like frames.
    What the hub delivers before the head is out waits in `pending`.
    """

    access_status = "200 OK"
    __slots__ = ("pending", "pending_events", "pending_bytes", "chunked")

    def __init__(self, wire: WireSocket, rt, matcher):
        super().__init__(None, wire, rt, matcher)
        self.pending: list[tuple[bytes, int]] | None = []
        self.pending_events = self.pending_bytes = 0
        self.chunked = True

    def send(self, message: bytes) -> None:
        self.wire.write(http_chunk(message) if self.chunked else message)

    def deliver(self, frame: bytes, n_events: int) -> None:
        if self.pending is None:
            self.write_bounded(frame if self.chunked else chunk_data(frame), n_events)
            return
        self.pending.append((frame, n_events))
        self.pending_events += n_events
        self.pending_bytes += len(frame)
        if self.pending_events > self.max_events or self.pending_bytes > self.max_bytes:
            self.slow()

    def behind(self, n_events: int) -> int:
        return self.wire.backlog_weight + self.pending_events + n_events

    def close(self, reason: str, code: int) -> None:
        if self.pending is not None and not self.closed:  # the head is not out yet: the goodbye waits for it
            self.closed = True
            self.rt.hub.remove(self)
            self.pending, self.pending_events, self.pending_bytes = [(http_chunk(self.closing_message(reason)), 0)], 0, 0
            return
        super().close(reason, code)

    def close_socket(self, code: int, reason: str) -> None:
        if self.conn is not None:
            self.conn.close(code, reason)

    @staticmethod
    def waited(pending: list[tuple[bytes, int]]) -> list[bytes]:
        """The body parts that follow the first one: what the hub delivered before the head was out."""
        return [chunk_data(frame) for frame, _ in pending]

    def start(self, head: bytes, first: bytes, chunked: bool) -> None:
        """Write the response head, the first part of the body and what waited for it, then hand
        the connection to the keeper."""
        self.chunked = chunked
        pending, self.pending, self.pending_events, self.pending_bytes = self.pending or [], None, 0, 0
        waited = self.waited(pending)
        body = b"".join([first] + waited)
        self.wire.write(head + (http_chunk(body) if chunked else body))
        # what waited is after the snapshot (and counts); a chunked body ends in CRLF
        self.snapshot_sent_with(sum(map(len, waited)) + (2 if chunked and waited else 0))
        self.rt.snapshots.note(self)  # held by the worker until its snapshot has drained
        sock = detach_socket(self.wire)
        keepalive = http_chunk(SSE_KEEPALIVE) if chunked else SSE_KEEPALIVE
        self.conn = HeldStream(keeper(), sock, self.wire, self, keepalive, LAST_CHUNK if chunked else b"")
        self.conn.keeper.take(self.conn, gevent.getcurrent())
        if self.closed:
            self.conn.close()


class StreamResponse(Response):
    """The response of a StreamClient: Flask's hooks (CORS) have shaped its headers; instead of
    gunicorn writing it, it writes its head and first chunk itself and hands the connection over.

    A stream has no length: its head carries no Content-Length (Werkzeug would add `0` for the
    empty body it sees, and a client must refuse it next to `Transfer-Encoding: chunked`, RFC 9112
    §6.3, or read an HTTP/1.0 body as empty)."""

    automatically_set_content_length = False

    def __init__(self, client: StreamClient, first: bytes, **kwargs):
        super().__init__(**kwargs)
        self.client, self.first = client, first

    def __call__(self, environ, start_response):
        headers = self.get_wsgi_headers(environ)
        chunked = environ.get("SERVER_PROTOCOL") != "HTTP/1.0"
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Connection"] = "close"  # HTTP/1.0: the body ends when the connection does
        protocol = "HTTP/1.1" if chunked else "HTTP/1.0"
        head = f"{protocol} {self.status}\r\n".encode("latin-1") + b"".join(
            f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.to_wsgi_list()) + b"\r\n"
        self.client.start(head, self.first, chunked)
        raise StopIteration  # gunicorn's way to end a request whose connection it no longer owns
