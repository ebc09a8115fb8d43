"""The upstream consumer: one websocket-client connection, read in one greenlet, reconnected with backoff.

It only reads and hands each frame to `on_frame`, which never blocks (the
ingest loop queues for the hub and the store). `create_connection` +
`recv_data` is used rather than `WebSocketApp`, which tops out near 35 k
events/s and neither backs off nor reconnects after a clean close.
"""

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import gevent
import orjson
import websocket

from handlers.backoff import reconnect_delay_ms

log = logging.getLogger(__name__)

FrameHandler = Callable[[bytes, bool, int], None]  # payload, is_binary, receive time (ms)


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

    def __init__(self, url: str, on_frame: FrameHandler, *, init_messages: tuple = (),
                 headers: tuple = (), ping_interval_s: float = 20.0, ping_timeout_s: float = 10.0,
                 connect_timeout_s: float = 10.0, backoff_min_ms: int = 50, backoff_max_ms: int = 1000,
                 healthy_after_s: float = 5.0, on_state: Callable[[UpstreamState], None] | None = None,
                 rng: random.Random | None = None):
        self.url = url
        self.on_frame = on_frame
        self.init_messages = init_messages
        self.headers = [f"{k}: {v}" for k, v in headers]
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.healthy_after_s = healthy_after_s
        self.on_state = on_state or (lambda state: None)
        self.rng = rng or random.Random()
        self.state = UpstreamState(url=url)
        self._ws: websocket.WebSocket | None = None
        self._stopping = False

    def run(self) -> None:
        """Connect, read until the connection ends, back off, repeat — until stop()."""
        attempt = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                self._session()
            except (OSError, websocket.WebSocketException) as exc:
                if self._stopping:
                    break
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("upstream %s: %s", self.url, self.state.last_error)
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
        self.state.connected = True
        self.state.connects += 1
        self.state.connected_since = time.time()
        self.state.last_error = None
        self.state.last_message_at = time.time()
        self.on_state(self.state)
        log.info("upstream connected: %s", self.url)
        pinger = gevent.spawn(self._ping_loop, ws)
        try:
            self._read(ws)
        finally:
            pinger.kill(block=False)
            ws.shutdown()
            self._ws = None

    def _read(self, ws: websocket.WebSocket) -> None:
        text, binary, close = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CLOSE
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            now = time.time()
            self.state.last_message_at = now
            if opcode == text or opcode == binary:
                self.state.frames += 1
                self.on_frame(data, opcode == binary, int(now * 1000))
            elif opcode == close:
                log.info("upstream closed the connection cleanly")
                return

    def _ping_loop(self, ws: websocket.WebSocket) -> None:
        while True:
            gevent.sleep(self.ping_interval_s)
            silent_s = time.time() - (self.state.last_message_at or 0)
            if silent_s > self.ping_interval_s + self.ping_timeout_s:
                log.warning("upstream silent for %.1f s: reconnecting", silent_s)
                ws.shutdown()
                return
            try:
                ws.ping()
            except (OSError, websocket.WebSocketException):
                return

    def _mark_disconnected(self) -> None:
        if self.state.connected:
            self.state.connected = False
            self.state.connected_since = None
            self.on_state(self.state)
