"""/ws: snapshot or resume first, then batched live events; subscribe, unsubscribe, ping."""

import logging

from flask import Blueprint, g, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from handlers.entitlements import refusal_message
from handlers.events import Event
from handlers.params import ParamError, stream_params
from handlers.protocol import (
    PONG_MESSAGE,
    Action,
    closing_message,
    error_message,
    events_message,
    parse_client_message,
    slow_message,
    snapshot_message,
    subscribed_message,
    ws_frame,
)
from handlers.topics import add_patterns, compile_patterns, limit_message, remove_patterns
from webapp.auth import CLIENT, access, request_scope, scoped_action, scoped_stream
from webapp.responses import json_error
from webapp.routes import runtime
from webapp.sockets import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
    Conflating,
    SocketClient,
    serve_sockets_lightly,
    take_socket,
)
from webapp.streams import fill_from_store, open_stream
from webapp.wire import WireSocket

log = logging.getLogger(__name__)
bp = Blueprint("ws", __name__)
sock = Sock()

@bp.record_once
def light_sockets(state) -> None:
    """Every flask-sock socket (/ws and the market routes) is served with a greenlet reader."""
    serve_sockets_lightly(state.app)


class WsClient(Conflating, SocketClient):
    """One /ws connection as the hub sees it."""

    kind = "ws"
    __slots__ = ("held", "held_events", "held_bytes", "max_hz", "on_slow", "carried", "held_latest",
                 "held_thinned", "held_dropped")
    closing_message = staticmethod(closing_message)

    def __init__(self, ws, wire: WireSocket, matcher, rt, max_hz: float | None = None, on_slow: str = "close"):
        super().__init__(ws, wire, rt, matcher)
        # live frames held while the snapshot is fetched, with the events each carries (hub.delivering)
        self.held: list[tuple[bytes, int, tuple[list[Event], int]]] | None = None
        self.held_events = self.held_bytes = 0
        self.init_delivery(max_hz, on_slow)  # §12: the hub groups clients by patterns and rate

    @staticmethod
    def encode(events: list[Event], conflated: int = 0) -> bytes:
        return ws_frame(events_message(events, conflated))

    def tell_slow(self, mode: str) -> None:
        self.send(slow_message(mode))

    def hold_live(self) -> None:
        """Live frames wait while the older part of its snapshot comes from the store (`release`)."""
        self.held = []
        self.start_hold()

    def deliver(self, frame: bytes, n_events: int) -> None:
        if self.held is not None:
            if self.held_latest is not None and self.absorb_held():
                return  # on newest values (on_slow=conflate), released when the snapshot is out
            self.held.append((frame, n_events, self.rt.hub.delivering))
            self.held_events += n_events
            self.held_bytes += len(frame)  # bounded like the wire: they are after the snapshot
            if self.held_events > self.max_events or self.held_bytes > self.max_bytes:
                if self.held_latest is not None:  # on_slow=conflate: their newest values stand for them
                    self.held, self.held_events, self.held_bytes, self.held_dropped = [], 0, 0, True
                else:
                    self.slow()
            return
        if self.carried is None:  # the usual case, once per client per flush: no tracking
            self.write_bounded(frame, n_events)
        else:
            self.write_tracked(frame, n_events)

    def behind(self, n_events: int) -> int:
        return self.wire.backlog_weight + self.held_events + n_events

    def slow(self, n_events: int = 0, frame: bytes | None = None) -> None:
        if self.conflate_instead(frame):
            return
        super().slow(n_events)
        self.held, self.held_events, self.held_bytes = None, 0, 0

    def release(self) -> None:
        """The snapshot is out: write what arrived meanwhile, then go live."""
        held, self.held, self.held_events, self.held_bytes = self.held or [], None, 0, 0
        if self.held_dropped:  # past its bound while it waited (on_slow=conflate): newest values
            events, conflated = self.newest_held()
            self.tell_slow("conflated")
            if events:
                self.deliver_again((events, conflated), self.encode(events, conflated), len(events))
            if not self.closed and not self.rt.hub.conflating(self):  # (past its bound again: the hub has it)
                self.tell_slow("live")
            return
        self.held_latest = None  # within its bound: the frames themselves go out
        for frame, n_events, carried in held:
            self.deliver_again(carried, frame, n_events)

    def deliver_again(self, carried: tuple[list[Event], int], frame: bytes, n_events: int) -> None:
        """Deliver a frame on the hub's behalf (it went to this client while held): the hub's `delivering`
        names its events, as it does for every frame the hub delivers itself (see write_tracked)."""
        self.rt.hub.delivering = carried
        self.deliver(frame, n_events)


@bp.before_request
def prepare_upgrade():
    """Runs before flask-sock's handshake: check parameters, then take over the socket."""
    rt = runtime()
    try:
        g.stream = stream_params(request.args, None, rt.settings.snapshot_default, rt.settings.snapshot_max)
    except ParamError as exc:
        return json_error(400, str(exc))
    g.scope = request_scope(request, rt.settings)  # TOKEN_TOPICS
    g.stream, g.refused_topics = scoped_stream(g.stream, request.args, g.scope)
    return take_socket(rt, request.environ, g.stream.on_slow)


@sock.route("/ws", bp=bp)
@access(CLIENT)
def stream(ws):
    rt = runtime()
    params, wire = g.stream, g.wire
    client = WsClient(ws, wire, compile_patterns(params.topics), rt, params.max_hz, params.on_slow)
    # the 101 waits in the cork for the first frames (one write), but not through a wait: a client would time its
    # handshake out (an outside audit: no 101 for the 35 s a store read hung)
    if params.since is not None and not rt.snapshots.wait_for_room(wire.peer_gone, before_wait=wire.uncork):
        rt.metrics.bound_hits.labels("snapshot_queue").inc()
        client.close("busy", CLOSE_TRY_AGAIN_LATER)  # past SNAPSHOT_QUEUE_MAX_BYTES for SNAPSHOT_QUEUE_WAIT_S
        client.finish()
        return
    # From open_stream to hub.add nothing yields: no event can slip between snapshot and live.
    opening = open_stream(rt, params, client.matcher)
    client.after_seq = opening.last_seq
    if opening.from_store is not None:
        client.hold_live()  # live events wait while the older part comes from the store
        wire.uncork()
    rt.hub.add(client)
    try:
        opening = fill_from_store(rt, opening, client.matcher, lambda: client.closed or wire.peer_gone())
        if client.closed:
            return
        client.send(snapshot_message(opening.epoch, opening.last_seq, opening.recovered, opening.events,
                                     opening.missing))
        client.snapshot_written()
        client.release()
        if g.refused_topics:
            client.send(error_message(refusal_message(g.refused_topics)))
        scope = g.scope  # the keeper's reader calls back outside this request: no `g` there
        client.hold(lambda text: answer(client, scoped_action(parse_client_message(text), scope, client.reply)))
        rt.snapshots.note(client)  # held by the worker until its snapshot has drained
    except ConnectionClosed:
        pass
    except Exception:
        # a defect: the 101 is out, so no HTTP answer may follow on this socket (the app's error handler
        # wrote a JSON 500 into the WebSocket stream, which its client read as a corrupt frame)
        log.exception("unhandled error in a /ws client's stream")
        client.close("internal_error", CLOSE_INTERNAL_ERROR)
    finally:
        client.finish()


def answer(client: WsClient, action) -> None:
    if not isinstance(action, Action):
        client.rt.metrics.client_errors.inc()
        client.reply(error_message(action.message))
    elif action.kind == "ping":
        client.reply(PONG_MESSAGE)
    else:
        current = client.matcher.patterns
        refused: tuple[str, ...] = ()
        if action.kind == "subscribe":
            limit = client.rt.settings.ws_max_patterns
            patterns, refused = add_patterns(current, action.topics, limit)
        else:
            patterns = remove_patterns(current, action.topics)
        if action.sets_rate:
            client.rt.hub.resubscribe(client, patterns, action.max_hz)
        elif patterns != current:
            client.rt.hub.resubscribe(client, patterns)
        if refused:
            client.rt.metrics.bound_hits.labels("ws_patterns").inc()
            client.reply(error_message(limit_message(limit, refused)))
        client.reply(subscribed_message(patterns, client.max_hz))
