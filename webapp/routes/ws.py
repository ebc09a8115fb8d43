"""/ws: snapshot or resume first, then batched live events; subscribe, unsubscribe, ping."""

import logging

import gevent
import gevent.event
from flask import Blueprint, g, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from handlers.events import Event
from handlers.params import ParamError, stream_params
from handlers.protocol import (
    PONG_MESSAGE,
    Action,
    closing_message,
    error_message,
    events_message,
    parse_client_message,
    snapshot_message,
    subscribed_message,
    ws_frame,
)
from handlers.topics import compile_patterns, merge_patterns, remove_patterns
from webapp.auth import CLIENT, access
from webapp.responses import json_error
from webapp.routes import runtime
from webapp.streams import fill_from_store, open_stream
from webapp.wire import WireSocket

log = logging.getLogger(__name__)
bp = Blueprint("ws", __name__)
sock = Sock()

CLOSE_GOING_AWAY = 1001
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


@bp.record_once
def serve_sockets_lightly(state) -> None:
    """Every flask-sock socket (/ws and the market routes) gets a greenlet reader and gevent's
    Event (threading.Event is a Condition with its own lock and deque per connection)."""
    options = state.app.config.setdefault("SOCK_SERVER_OPTIONS", {})
    options.setdefault("thread_class", ReaderGreenlet)
    options.setdefault("event_class", gevent.event.Event)


class WsClient:
    """One /ws connection as the hub sees it."""

    kind = "ws"
    __slots__ = ("ws", "wire", "matcher", "after_seq", "rt", "max_events", "max_bytes", "closed", "held",
                 "held_events")

    def __init__(self, ws, wire: WireSocket, matcher, rt):
        self.ws = ws
        self.wire = wire
        self.matcher = matcher
        self.after_seq = 0
        self.rt = rt
        self.max_events = rt.settings.ws_queue_max_events
        self.max_bytes = rt.settings.ws_queue_max_bytes
        self.closed = False
        self.held: list[tuple[bytes, int]] | None = None  # live frames held while the snapshot is fetched
        self.held_events = 0

    @staticmethod
    def encode(events: list[Event]) -> bytes:
        return ws_frame(events_message(events))

    def send(self, message: bytes) -> None:
        self.wire.write(ws_frame(message))

    def deliver(self, frame: bytes, n_events: int) -> None:
        if self.held is not None:
            self.held.append((frame, n_events))
            self.held_events += n_events
            if self.held_events > self.max_events:
                self.slow()
            return
        wire = self.wire
        if wire.backlog_bytes and (wire.backlog_bytes + len(frame) > self.max_bytes
                                   or wire.backlog_weight + n_events > self.max_events):
            self.slow(n_events)
            return
        wire.write(frame, n_events)

    def slow(self, n_events: int = 0) -> None:
        behind = self.wire.backlog_weight + self.held_events + n_events
        self.rt.metrics.slow_consumers.labels(self.kind).inc()
        self.rt.metrics.queue_drops.labels(self.kind).inc(behind)
        log.info("closing a slow /ws consumer (%d events behind)", behind)
        self.held = None
        self.close("slow_consumer", CLOSE_TRY_AGAIN_LATER)

    def release(self) -> None:
        """The snapshot is out: write what arrived meanwhile, then go live."""
        held, self.held, self.held_events = self.held or [], None, 0
        for frame, n_events in held:
            self.deliver(frame, n_events)

    def close(self, reason: str, code: int) -> None:
        """Drop the backlog, say why, close with `code`; the handler greenlet then ends."""
        if self.closed:
            return
        self.closed = True
        self.rt.hub.remove(self)
        self.wire.discard_backlog()
        self.send(closing_message(reason))
        try:
            self.ws.close(reason=code, message=reason)
        except ConnectionClosed:
            pass
        self.ws.event.set()  # wake the handler blocked in receive()


@bp.before_request
def prepare_upgrade():
    """Runs before flask-sock's handshake: check parameters, refuse deflate, own the socket."""
    rt = runtime()
    try:
        g.stream = stream_params(request.args, None, rt.settings.snapshot_default, rt.settings.snapshot_max)
    except ParamError as exc:
        return json_error(400, str(exc))
    environ = request.environ
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


@sock.route("/ws", bp=bp)
@access(CLIENT)
def stream(ws):
    rt = runtime()
    params, wire = g.stream, g.wire
    client = WsClient(ws, wire, compile_patterns(params.topics), rt)
    # From open_stream to hub.add nothing yields: no event can slip between snapshot and live.
    opening = open_stream(rt, params, client.matcher)
    client.after_seq = opening.last_seq
    if opening.from_store is not None:
        client.held = []  # live events wait while the older part comes from the store
    rt.hub.add(client)
    try:
        opening = fill_from_store(rt, opening, client.matcher)
        if client.closed:
            return
        client.send(snapshot_message(opening.epoch, opening.last_seq, opening.recovered, opening.events,
                                     opening.missing))
        client.release()
        while not client.closed:
            text = ws.receive()
            if text is not None:
                answer(client, parse_client_message(text))
    except ConnectionClosed:
        pass
    finally:
        rt.hub.remove(client)
        client.closed = True
        wire.wait_drained(rt.settings.slow_close_timeout_s)
        ws.thread.join(timeout=1.0)  # let the close handshake finish before gunicorn closes the socket


def answer(client: WsClient, action) -> None:
    if not isinstance(action, Action):
        client.rt.metrics.client_errors.inc()
        client.send(error_message(action.message))
    elif action.kind == "ping":
        client.send(PONG_MESSAGE)
    else:
        current = client.matcher.patterns
        if action.kind == "subscribe":
            patterns = merge_patterns(current, action.topics)
        else:
            patterns = remove_patterns(current, action.topics)
        client.rt.hub.resubscribe(client, patterns)
        client.send(subscribed_message(patterns))
