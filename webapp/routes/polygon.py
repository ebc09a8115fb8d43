"""/<market> (/stocks, /options, /forex, /crypto, /indices): the Polygon/Massive client protocol over the relay's feed.

Existing programs written against the vendor's socket point at the relay and
keep working: `connected`, `auth`, per-topic `subscribe` acks, data frames that
are JSON arrays of upstream elements. The key sent in `auth` is the relay's
API token (checked against API_TOKENS when it is set), so this route asks for
no token before the upgrade: the vendor's clients cannot send one there.
"""

import logging

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
    limit_change,
    parse_action,
)
from handlers.protocol import ws_frame
from handlers.topics import compile_patterns
from webapp.auth import MARKET, access, token_matches
from webapp.routes import runtime
from webapp.sockets import SocketClient, take_socket
from webapp.wire import WireSocket

log = logging.getLogger(__name__)
bp = Blueprint("polygon", __name__)
sock = Sock()

AUTH_TIMEOUT_S = 30.0  # a connection that has not authenticated by then is closed
CLOSE_POLICY_VIOLATION = 1008
CLOSE_SERVICE_RESTART = 1012  # the vendor's clients reconnect on it (1001 would make them stop)
NOTHING = compile_patterns(())


class PolygonClient(SocketClient):
    """One /<market> connection as the hub sees it; no topics (so no data) until it subscribes."""

    kind = "polygon"
    __slots__ = ("authenticated", "scope")
    closing_message = staticmethod(closing_frame)

    def __init__(self, ws, wire: WireSocket, rt):
        super().__init__(ws, wire, rt, NOTHING)
        self.authenticated = False
        self.scope = None  # TOKEN_TOPICS patterns of the key it authenticated with (None: not limited)

    @staticmethod
    def encode(events: list[Event]) -> bytes:
        """Frames of one flush for one group: built once, shared by every client of the group."""
        return b"".join(ws_frame(payload) for payload in data_frames(events))

    def deliver(self, frame: bytes, n_events: int) -> None:
        if frame:  # empty when nothing in the batch was market data
            self.write_bounded(frame, n_events)

    def subscribe(self, topics: tuple[str, ...]) -> None:
        """Make `topics` the whole subscription (it may become empty)."""
        if not self.matcher.patterns:
            # live from here on: what was published before its first topic is not this client's
            self.after_seq = self.rt.last_seq
        self.rt.hub.resubscribe(self, topics)

    def close_socket(self, code: int, reason: str) -> None:
        if reason == "shutdown":
            code = CLOSE_SERVICE_RESTART
        super().close_socket(code, reason)

    def auth_deadline(self) -> None:
        if not self.authenticated and not self.closed:
            self.refuse(AUTH_TIMEOUT, CLOSE_POLICY_VIOLATION, "auth_timeout")

    def refuse(self, frame: bytes, code: int, reason: str) -> None:
        """Close before any subscription: a status, then the close."""
        self.closed = True
        self.rt.hub.remove(self)
        self.send(frame)
        self.close_socket(code, reason)


@bp.before_request
def prepare_upgrade():
    """Runs before flask-sock's handshake: take over the socket, as /ws does."""
    return take_socket(runtime(), request.environ)


@sock.route(f"/<any({', '.join(MARKETS)}):market>", bp=bp)
@access(MARKET)  # authenticated in-band by the `auth` action; a wrong token brought along is refused before
def market_socket(ws, market: str):
    rt = runtime()
    wire = g.wire
    client = PolygonClient(ws, wire, rt)
    client.send(CONNECTED)
    rt.hub.add(client)  # with no topics: counted, and closed at shutdown, but sent no data
    try:
        client.hold(lambda text: answer(client, parse_action(text)),  # the request greenlet ends
                    deadline_s=AUTH_TIMEOUT_S, on_deadline=client.auth_deadline)
    except ConnectionClosed:
        pass
    finally:
        client.finish()


def answer(client: PolygonClient, action) -> None:
    if isinstance(action, BadAction):
        client.rt.metrics.client_errors.inc()
        client.reply(error_frame(action.message))
    elif isinstance(action, Auth):
        if client.authenticated:
            client.reply(ALREADY_AUTHENTICATED)
        elif client.rt.settings.api_tokens and not token_matches(action.key, client.rt.settings.api_tokens):
            log.info("a Polygon client sent an unknown key: closing it")
            client.refuse(AUTH_FAILED, CLOSE_POLICY_VIOLATION, "auth_failed")
        else:
            client.authenticated = True
            client.scope = client.rt.settings.topic_scope(action.key)
            client.reply(AUTH_SUCCESS)
    elif not client.authenticated:
        client.rt.metrics.client_errors.inc()
        client.reply(AUTH_REQUIRED)
    else:
        topics, reply = change_reply(limit_change(action, client.scope), client.matcher.patterns,
                                     client.rt.settings.ws_max_patterns)
        # no yield between the change and its ack: data for a new topic comes after the ack
        client.subscribe(topics)
        client.reply(reply)
