"""What /ws and the Polygon routes share: taking over the socket before the handshake, a client the
hub can write to within bounds, closing it with a reason, and the handler's last steps.

The two routes differ in their protocol (handlers/protocol.py and handlers/polygon.py),
not in how bytes reach a socket, so that part lives here once.
"""

from __future__ import annotations

import logging

import gevent
import gevent.event
from flask import g
from simple_websocket import ConnectionClosed

from handlers.protocol import ws_frame
from webapp.responses import json_error
from webapp.wire import WireSocket

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013


class ReaderGreenlet:
    """simple-websocket's reader "thread" as a bare greenlet.

    Under gevent a threading.Thread is a greenlet anyway, but it also carries
    a registry entry, a state lock and a started-Event (a Condition, a lock
    and a deque): a few KiB per idle connection for nothing.
    """

    __slots__ = ("name", "_greenlet")

    def __init__(self, target):
        self.name = "ws-reader(_thread)"
        self._greenlet = gevent.Greenlet(target)

    def start(self) -> None:
        self._greenlet.start()

    def join(self, timeout: float | None = None) -> None:
        self._greenlet.join(timeout)

    def is_alive(self) -> bool:
        return not self._greenlet.dead


def serve_sockets_lightly(app) -> None:
    """Every flask-sock socket gets a greenlet reader and gevent's Event (threading.Event is a
    Condition with its own lock and deque per connection)."""
    options = app.config.setdefault("SOCK_SERVER_OPTIONS", {})
    options.setdefault("thread_class", ReaderGreenlet)
    options.setdefault("event_class", gevent.event.Event)


def take_socket(rt, environ):
    """Before flask-sock's handshake: refuse what cannot be upgraded, refuse deflate, own the socket.

    Returns an error response, or None with `g.wire` set to the WireSocket every
    write to this connection goes through (the library's pongs and closes too).
    """
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket" or "HTTP_SEC_WEBSOCKET_KEY" not in environ:
        return json_error(400, "this route needs a WebSocket upgrade request")
    if rt.shutting_down:
        return json_error(503, "the relay is shutting down")
    if not rt.ready.is_set():
        return json_error(503, "the relay is starting: retry in a moment")
    # Broadcast frames are shared by every client, so per-client compression is
    # refused: simple-websocket would accept any offer (3.3x CPU, 15x p99).
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    for key in ("gunicorn.socket", "werkzeug.socket"):
        if key in environ:
            environ[key] = g.wire = WireSocket(environ[key])
            return None
    return json_error(500, "no socket in the WSGI environment (run under gunicorn)")


class SocketClient:
    """One WebSocket connection as the hub sees it: bounded writes, a slow-consumer close, a reasoned close.

    Subclasses give `kind` (the metrics label), `closing_message(reason)` (the
    frame sent before a close the relay initiates) and `encode(events)`.
    """

    kind = "socket"
    __slots__ = ("ws", "wire", "rt", "matcher", "after_seq", "max_events", "max_bytes", "closed")

    def __init__(self, ws, wire: WireSocket, rt, matcher):
        self.ws = ws
        self.wire = wire
        self.rt = rt
        self.matcher = matcher
        self.after_seq = 0
        self.max_events = rt.settings.ws_queue_max_events
        self.max_bytes = rt.settings.ws_queue_max_bytes
        self.closed = False

    @staticmethod
    def closing_message(reason: str) -> bytes:
        raise NotImplementedError

    def send(self, message: bytes) -> None:
        self.wire.write(ws_frame(message))

    def write_bounded(self, frame: bytes, n_events: int) -> None:
        """Write a shared frame, or close the client if it would go past its backlog bounds."""
        wire = self.wire
        if wire.backlog_bytes and (wire.backlog_bytes + len(frame) > self.max_bytes
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
        try:
            self.ws.close(reason=code, message=reason)
        except ConnectionClosed:
            pass
        self.ws.event.set()  # wake the handler blocked in receive()

    def finish(self) -> None:
        """The handler's last steps, however it ends: out of the hub, written out, closed."""
        self.rt.hub.remove(self)
        self.closed = True
        self.wire.wait_drained(self.rt.settings.slow_close_timeout_s)
        self.ws.thread.join(timeout=1.0)  # let the close handshake finish before gunicorn closes the socket
