"""The upstream consumer: one websocket-client connection, read in one greenlet, reconnected with backoff.

It only reads and hands the frames of each read to `on_frames` in one call,
which never blocks (the ingest loop queues for the hub and the store). websocket-client's
`create_connection` makes the connection (handshake, TLS, proxies, headers)
and sends; reading is done here by `FrameReader` (handlers/reader.py, sans I/O,
bounded by UPSTREAM_MAX_FRAME_BYTES from the header), which takes every frame out
of one large `recv` at a few microseconds each, where websocket-client's
`recv_data` spends some 15 µs of Python per frame (and `WebSocketApp` tops
out near 35 k events/s and neither backs off nor reconnects after a clean close).
"""

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import gevent
import orjson
import websocket
from gevent.exceptions import ConcurrentObjectUseError

from handlers.backoff import reconnect_delay_ms
from handlers.reader import OP_BINARY, OP_CLOSE, OP_OVERSIZE, OP_PING, OP_TEXT, FrameReader, ProtocolViolation
from handlers.secrets import shown_url
from webapp.logs import Throttle, held_note, printable

log = logging.getLogger(__name__)

FramesHandler = Callable[[list[tuple[bytes, bool]], int], None]  # (payload, is_binary)..., receive time (ms)

RECV_BYTES = 256 * 1024
YIELD_AFTER_S = 0.005  # a reader that always finds data waiting never blocks: let the others run

def _yield_through_poll(sock) -> None:
    """Let the flusher, the store writer and requests run while data keeps coming.

    A read that finds data waiting never yields, so a busy reader would hold the
    loop. Not sleep(0): gevent runs up to 50 callbacks before it polls, so a
    reader re-queued that way holds the loop for 50 turns, timers and sockets
    waiting. Not idle() either (RSS grew under connection churn). Waiting for the
    socket to be readable goes through the poll: whatever was ready runs first,
    and a socket with data waiting is readable at once.
    """
    pending = getattr(sock, "pending", None)  # TLS: decrypted bytes may wait with the socket unreadable
    wait = getattr(sock, "_wait", None)
    if wait is None or (pending is not None and pending()):
        gevent.sleep(0.001)
        return
    try:
        wait(sock._read_event)
    except ConcurrentObjectUseError:  # closed by another greenlet (stop, the pinger)
        raise websocket.WebSocketConnectionClosedException("the upstream socket was closed") from None


def closed_by(payload: bytes) -> str:
    """What an upstream's close frame said: its code and reason (escaped, at most 200 characters)."""
    if len(payload) < 2:
        return "closed by the upstream (no code)"
    reason = printable(payload[2:].decode("utf-8", "replace")[:200])
    return f"closed by the upstream ({int.from_bytes(payload[:2], 'big')}{': ' + reason if reason else ''})"


@dataclass
class UpstreamState:
    """What /health and the monitor show about the upstream."""

    url: str
    connected: bool = False
    reconnects: int = 0
    connects: int = 0
    last_message_at: float | None = None  # unix seconds
    last_error: str | None = None
    frames: int = 0
    connected_since: float | None = None
    statuses: list = field(default_factory=list)


class Upstream:
    """Holds the one upstream connection for this process."""

    def __init__(self, url: str, on_frames: FramesHandler, *, init_messages: tuple = (),
                 headers: tuple = (), ping_interval_s: float = 20.0, ping_timeout_s: float = 10.0,
                 connect_timeout_s: float = 10.0, backoff_min_ms: int = 50, backoff_max_ms: int = 1000,
                 healthy_after_s: float = 5.0, on_state: Callable[[UpstreamState], None] | None = None,
                 rng: random.Random | None = None, after_init: Callable[[], list] | None = None,
                 max_frame_bytes: int = 1 << 62, on_oversize: Callable[[int], None] = lambda n: None,
                 hold: Callable[[], None] | None = None):
        self.url = url
        self.on_frames = on_frames  # every data frame of one read, in one call
        self.init_messages = init_messages
        self.after_init = after_init  # messages sent after init_messages on every connect (the subscriptions)
        self.headers = [f"{k}: {v}" for k, v in headers]
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.healthy_after_s = healthy_after_s
        self.on_state = on_state or (lambda state: None)
        self.max_frame_bytes = max_frame_bytes
        self.on_oversize = on_oversize  # a message over max_frame_bytes was skipped (its announced length)
        # back-pressure: called after each read's frames are handed on, blocks while they cannot take more
        # (a clustered leader's bus outbox at BUS_OUTBOX_MAX); the silence of a held reader is not the upstream's
        self.hold = hold
        self._held_since: float | None = None
        self._held_until = 0.0
        self.rng = rng or random.Random()
        self.state = UpstreamState(url=shown_url(url))  # /health and the log: credentials masked
        # one line of each kind per 10 s while it keeps failing or flapping (was one per attempt: an upstream
        # that closed at once wrote 63 lines in 20 s), with how many were held back
        self._failures = Throttle(10.0)
        self._ws: websocket.WebSocket | None = None
        self._stopping = False

    def run(self) -> None:
        """Connect, read until the connection ends, back off, repeat — until stop()."""
        attempt = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                self._session()
            except (OSError, websocket.WebSocketException, ProtocolViolation) as exc:
                if self._stopping:
                    break
                # the upstream's own words (a refused handshake's status line and body): escaped and cut
                self.state.last_error = printable(f"{type(exc).__name__}: {exc}")
                held = self._failures.allow("connect")
                if held is not None:
                    log.warning("upstream %s: %s%s", self.state.url, self.state.last_error, held_note(held))
            self._mark_disconnected()
            if self._stopping:
                break
            if time.monotonic() - started >= self.healthy_after_s and self.state.frames:
                attempt = 0  # a healthy connection resets the backoff
            delay_ms = reconnect_delay_ms(attempt, self.backoff_min_ms, self.backoff_max_ms, self.rng.random())
            attempt += 1
            self.state.reconnects += 1
            self.on_state(self.state)
            gevent.sleep(delay_ms / 1000.0)

    def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None:
            try:
                ws.send_close()  # a clean goodbye; the reader then ends on the closed socket
            except (OSError, websocket.WebSocketException):
                pass
            ws.shutdown()

    def _session(self) -> None:
        ws = websocket.create_connection(
            self.url, header=self.headers, timeout=self.connect_timeout_s,
            skip_utf8_validation=True, enable_multithread=True,
        )
        self._ws = ws
        ws.settimeout(None)  # reads block this greenlet only; the pinger detects a dead peer
        for message in self.init_messages:
            ws.send(message if isinstance(message, str) else orjson.dumps(message).decode())
        for message in self.after_init() if self.after_init is not None else ():
            ws.send(orjson.dumps(message).decode())
        self.state.connected = True
        self.state.connects += 1
        self.state.connected_since = time.time()
        self.state.last_error = None
        self.state.last_message_at = time.time()
        self.on_state(self.state)
        held = self._failures.allow("connected")
        if held is not None:
            log.info("upstream connected: %s%s", self.state.url, held_note(held))
        pinger = gevent.spawn(self._ping_loop, ws)
        try:
            self._read(ws)
        finally:
            pinger.kill(block=False)
            ws.shutdown()
            self._ws = None

    def send(self, message: dict) -> bool:
        """Send one JSON message on the open connection (False when there is none: the next
        connect sends what matters again)."""
        ws = self._ws
        if ws is None or not self.state.connected:
            return False
        try:
            ws.send(orjson.dumps(message).decode())  # enable_multithread: sends hold the library's lock
        except (OSError, websocket.WebSocketException) as exc:
            log.warning("upstream: could not send %s: %s", message.get("action", "a message"), exc)
            return False
        return True

    def _read(self, ws: websocket.WebSocket) -> None:
        sock = ws.sock  # ws.shutdown() (stop, the pinger) sets ws.sock to None and closes this
        reader = FrameReader(self.max_frame_bytes)
        state, on_frames = self.state, self.on_frames
        # one buffer for every read: recv(256 KiB) would malloc 256 KiB and shrink it each time,
        # which fragments the heap (RSS grew ~3 KB per read in the churn test)
        into = bytearray(RECV_BYTES)
        view = memoryview(into)
        yielded = time.monotonic()
        while True:
            n = sock.recv_into(into)
            if not n:
                raise websocket.WebSocketConnectionClosedException("the upstream closed the TCP connection")
            chunk = bytes(view[:n])
            now = time.time()
            recv_ms = int(now * 1000)  # every frame of one read shares its receive time
            batch: list[tuple[bytes, bool]] = []
            items = reader.feed(chunk)
            if items:
                # alive means whole frames arrive: bytes of a frame that never ends (a header
                # announcing 2^62 bytes) do not keep the connection from being made again
                state.last_message_at = now
            for opcode, payload in items:
                if opcode == OP_TEXT or opcode == OP_BINARY:
                    state.frames += 1
                    batch.append((payload, opcode == OP_BINARY))
                elif opcode == OP_PING:
                    ws.pong(payload)
                elif opcode == OP_OVERSIZE:
                    self.on_oversize(payload)
                elif opcode == OP_CLOSE:
                    if batch:
                        on_frames(batch, recv_ms)
                    state.last_error = closed_by(payload)  # else /health gave no reason for the disconnect
                    held = self._failures.allow("closed")
                    if held is not None:
                        log.info("upstream: %s%s", state.last_error, held_note(held))
                    try:
                        ws.send_close()
                    except (OSError, websocket.WebSocketException):
                        pass
                    return
            if batch:
                on_frames(batch, recv_ms)
            if self.hold is not None:
                self.held_while(self.hold)
            if time.monotonic() - yielded > YIELD_AFTER_S:
                _yield_through_poll(sock)
                yielded = time.monotonic()

    def held_while(self, wait: Callable[[], None]) -> None:
        """Run `wait` (the relay not reading by its own choice: back-pressure, or still handling a large
        frame in parts): the upstream's silence meanwhile is not counted against it. Without this a frame
        that took longer to handle than the ping interval plus its time-out dropped the connection, and
        the frames already in the socket with it (an outside check: 1,685 of 2,000 lost at 1 s + 1 s)."""
        self._held_since = time.time()
        try:
            wait()
        finally:
            self._held_since, self._held_until = None, time.time()

    def _ping_loop(self, ws: websocket.WebSocket) -> None:
        """Ping every interval; reconnect once nothing arrived for interval + time-out. It wakes for whichever
        comes first: checked at the pings only, a silence was noticed up to an interval late (40 s for the
        documented 30, an outside audit)."""
        limit = self.ping_interval_s + self.ping_timeout_s
        next_ping = time.monotonic() + self.ping_interval_s
        while True:
            if self._held_since is not None:  # not reading by our choice (back-pressure): nothing to time
                wait = self.ping_interval_s
            else:
                wait = min(next_ping - time.monotonic(), self._heard_at() + limit - time.time())
            gevent.sleep(max(0.05, wait))
            if self._held_since is not None:
                continue  # what the upstream sends waits in the socket
            silent_s = time.time() - self._heard_at()
            if silent_s > limit:
                log.warning("upstream silent for %.1f s: reconnecting", silent_s)
                ws.shutdown()
                return
            if time.monotonic() >= next_ping:
                next_ping = time.monotonic() + self.ping_interval_s
                try:
                    ws.ping()
                except (OSError, websocket.WebSocketException):
                    return

    def _heard_at(self) -> float:
        """When the upstream was last heard from (or the relay last stopped holding its reads), unix seconds."""
        return max(self.state.last_message_at or 0, self._held_until)

    def _mark_disconnected(self) -> None:
        if self.state.connected:
            self.state.connected = False
            self.state.connected_since = None
            self.on_state(self.state)
