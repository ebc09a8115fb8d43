"""/<market> (/stocks, /options, /forex, /crypto, /indices): the Polygon/Massive client protocol over the relay's feed.

Existing programs written against the vendor's socket point at the relay and
keep working: `connected`, `auth`, per-topic `subscribe` acks, data frames that
are JSON arrays of upstream elements. The key sent in `auth` is the relay's
API token (checked against API_TOKENS when it is set), so this route asks for
no token before the upgrade: the vendor's clients cannot send one there.
"""

import logging
import time

from flask import Blueprint, g, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from handlers.events import Event
from handlers.polygon import (
    ALREADY_AUTHENTICATED,
    AUTH_FAILED,
    AUTH_REQUIRED,
    AUTH_SUCCESS,
    AUTH_TIMEOUT,
    CONNECTED,
    MARKETS,
    Auth,
    BadAction,
    change_reply,
    closing_frame,
    data_frames,
    error_frame,
    parse_action,
)
from handlers.protocol import ws_frame
from handlers.topics import compile_patterns
from webapp.auth import OPEN, access, token_matches
from webapp.responses import json_error
from webapp.routes import runtime
from webapp.wire import WireSocket

log = logging.getLogger(__name__)
bp = Blueprint("polygon", __name__)
sock = Sock()

AUTH_TIMEOUT_S = 30.0  # a connection that has not authenticated by then is closed
CLOSE_POLICY_VIOLATION = 1008
CLOSE_SERVICE_RESTART = 1012  # the vendor's clients reconnect on it (1001 would make them stop)
CLOSE_TRY_AGAIN_LATER = 1013
NOTHING = compile_patterns(())


class PolygonClient:
    """One /<market> connection as the hub sees it; no topics (so no data) until it subscribes."""

    kind = "polygon"

    def __init__(self, ws, wire: WireSocket, rt):
        self.ws = ws
        self.wire = wire
        self.rt = rt
        self.matcher = NOTHING
        self.after_seq = 0
        self.max_events = rt.settings.ws_queue_max_events
        self.max_bytes = rt.settings.ws_queue_max_bytes
        self.authenticated = False
        self.closed = False

    @staticmethod
    def encode(events: list[Event]) -> bytes:
        """Frames of one flush for one group: built once, shared by every client of the group."""
        return b"".join(ws_frame(payload) for payload in data_frames(events))

    def send(self, message: bytes) -> None:
        self.wire.write(ws_frame(message))

    def deliver(self, frame: bytes, n_events: int) -> None:
        if not frame:
            return  # nothing in the batch was market data
        wire = self.wire
        if wire.backlog_bytes and (wire.backlog_bytes + len(frame) > self.max_bytes
                                   or wire.backlog_weight + n_events > self.max_events):
            behind = wire.backlog_weight + n_events
            self.rt.metrics.slow_consumers.labels(self.kind).inc()
            self.rt.metrics.queue_drops.labels(self.kind).inc(behind)
            log.info("closing a slow Polygon consumer (%d events behind)", behind)
            self.close("slow_consumer", CLOSE_TRY_AGAIN_LATER)
            return
        wire.write(frame, n_events)

    def subscribe(self, topics: tuple[str, ...]) -> None:
        """Make `topics` the whole subscription (it may become empty)."""
        if not self.matcher.patterns:
            # live from here on: what was published before its first topic is not this client's
            self.after_seq = self.rt.last_seq
        self.rt.hub.resubscribe(self, topics)

    def close(self, reason: str, code: int) -> None:
        """Drop the backlog, say why in a status, close; the handler greenlet then ends."""
        if self.closed:
            return
        self.closed = True
        self.rt.hub.remove(self)
        self.wire.discard_backlog()
        self.send(closing_frame(reason))
        if reason == "shutdown":
            code = CLOSE_SERVICE_RESTART
        self._close_socket(code, reason)

    def refuse(self, frame: bytes, code: int, reason: str) -> None:
        """Close before any subscription: a status, then the close."""
        self.closed = True
        self.rt.hub.remove(self)
        self.send(frame)
        self._close_socket(code, reason)

    def _close_socket(self, code: int, reason: str) -> None:
        try:
            self.ws.close(reason=code, message=reason)
        except ConnectionClosed:
            pass
        self.ws.event.set()  # wake the handler blocked in receive()


@bp.before_request
def prepare_upgrade():
    """Runs before flask-sock's handshake: refuse deflate and own the socket, as /ws does."""
    rt = runtime()
    environ = request.environ
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket" or "HTTP_SEC_WEBSOCKET_KEY" not in environ:
        return json_error(400, "this route needs a WebSocket upgrade request")
    if rt.shutting_down:
        return json_error(503, "the relay is shutting down")
    if not rt.ready.is_set():
        return json_error(503, "the relay is starting: retry in a moment")
    # Every client of a subscription gets the same frame bytes, so per-client
    # compression is refused (the vendor's clients offer it and accept a no).
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    for key in ("gunicorn.socket", "werkzeug.socket"):
        if key in environ:
            environ[key] = g.wire = WireSocket(environ[key])
            return None
    return json_error(500, "no socket in the WSGI environment (run under gunicorn)")


@sock.route(f"/<any({', '.join(MARKETS)}):market>", bp=bp)
@access(OPEN)  # authenticated in-band by the `auth` action, not before the upgrade
def market_socket(ws, market: str):
    rt = runtime()
    wire = g.wire
    client = PolygonClient(ws, wire, rt)
    client.send(CONNECTED)
    rt.hub.add(client)  # with no topics: counted, and closed at shutdown, but sent no data
    auth_deadline = time.monotonic() + AUTH_TIMEOUT_S
    try:
        while not client.closed:
            if client.authenticated:
                text = ws.receive()
            else:
                text = ws.receive(timeout=max(0.0, auth_deadline - time.monotonic()))
                if text is None and not client.closed and time.monotonic() >= auth_deadline:
                    client.refuse(AUTH_TIMEOUT, CLOSE_POLICY_VIOLATION, "auth_timeout")
                    break
            if text is not None:
                answer(client, parse_action(text))
    except ConnectionClosed:
        pass
    finally:
        rt.hub.remove(client)
        client.closed = True
        wire.wait_drained(rt.settings.slow_close_timeout_s)
        ws.thread.join(timeout=1.0)  # let the close handshake finish before gunicorn closes the socket


def answer(client: PolygonClient, action) -> None:
    if isinstance(action, BadAction):
        client.rt.metrics.client_errors.inc()
        client.send(error_frame(action.message))
    elif isinstance(action, Auth):
        if client.authenticated:
            client.send(ALREADY_AUTHENTICATED)
        elif client.rt.settings.api_tokens and not token_matches(action.key, client.rt.settings.api_tokens):
            log.info("a Polygon client sent an unknown key: closing it")
            client.refuse(AUTH_FAILED, CLOSE_POLICY_VIOLATION, "auth_failed")
        else:
            client.authenticated = True
            client.send(AUTH_SUCCESS)
    elif not client.authenticated:
        client.rt.metrics.client_errors.inc()
        client.send(AUTH_REQUIRED)
    else:
        topics, reply = change_reply(action, client.matcher.patterns)
        # no yield between the change and its ack: data for a new topic comes after the ack
        client.subscribe(topics)
        client.send(reply)
