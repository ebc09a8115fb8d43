"""Connections held without a greenlet: the event loop watches their sockets, one shared greenlet reads them.

Measured (bench/idle.py breakdown, docs/benchmarks.md): an idle /ws connection cost
39.7 KiB of worker RSS and an idle /sse one 20.3 KiB; 85-90 % of that was the parked
greenlets (the request's, and simple-websocket's reader for /ws: saved C stacks, frames,
Python 3.11's data-stack chunks) and the request objects they kept alive. The connection's
own state is under 2 KiB.

So once the handshake and the snapshot are out, a route hands its socket to the Keeper and
its request greenlet ends. A held connection is then a socket, one libev io watcher, its
WireSocket, its protocol state and its client:

- reads: the watcher's callback (run by the hub) reads what is there without blocking and
  answers a read of nothing but pings and pongs itself; anything else it queues, with the
  watcher stopped, for one reader greenlet per worker, which feeds the protocol, answers
  pings and hands complete messages to the route's callback, then starts the watcher again;
- pings (/ws) and keep-alive comments (/sse), route deadlines (the Polygon auth time-out)
  and close time-outs: one ticker greenlet walks a wheel of time slots. A connection's
  first ping falls at a random point of the interval's second half, so a storm of
  connections does not become a storm of pings every interval;
- writes are unchanged: every byte goes through the connection's WireSocket (wire.py),
  whole frames, non-blocking.

Garbage collection: a held /ws connection is ~26 objects the cyclic collector tracks, and
a full collection over 9,000 of them took 35-50 ms; every 5 s the ticker freezes what
came since (handlers/heldgc.py says when, and when to thaw), and a closed connection
breaks its own cycles so that refcounting frees it.

gunicorn's gevent worker counts connections by its pool's greenlets (WORKER_CONNECTIONS).
A held connection keeps the pool slot its request greenlet had (`HeldPool`, installed by
gunicorn.conf.py), so the cap, the accept loop and the graceful shutdown still count it.
"""

from __future__ import annotations

import _socket
import gc
import logging
import random
import time
from collections import deque

import gevent
from gevent.event import Event as Signal
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from handlers.control import OP_PONG, PING_FRAME, control_frames, pong_for
from handlers.heldgc import gc_step
from webapp import accesslog
from webapp.heldpool import HeldPool, pool_slot_of  # noqa: F401  (gunicorn.conf.py installs HeldPool)

log = logging.getLogger(__name__)

TICK_S = 0.25
RECV_BYTES = 16384
PEER_CLOSE_WAIT_S = 1.0  # after our close frame, how long the peer gets to answer with its own
GC_STEP_S = 5.0  # how often the ticker asks handlers/heldgc.py whether to freeze or thaw


class Held:
    """One held connection. Subclasses speak the protocol: `readable(data)`, `due(tick)`."""

    __slots__ = ("keeper", "sock", "wire", "client", "watcher", "slot", "tick", "state", "close_tick", "__weakref__")

    OPEN, CLOSING, CLOSED = 0, 1, 2

    def __init__(self, keeper: Keeper, sock, wire, client):
        self.keeper = keeper
        self.sock = sock
        self.wire = wire
        self.client = client
        self.watcher = None
        self.slot: HeldPool | None = None
        self.tick = -1  # the wheel slot it is in
        self.state = Held.OPEN
        self.close_tick = 0

    def readable(self, data: bytes) -> None:
        """In the reader greenlet: a read `quick` did not take (b"": the peer closed)."""
        raise NotImplementedError

    def quick(self, data: bytes) -> bool:
        """Handle `data` in the event loop's callback if it needs no greenlet (nothing that may
        block or switch); False hands it to the reader greenlet."""
        return False

    def due(self, tick: int) -> None:
        raise NotImplementedError

    def closing(self) -> None:
        """Our side has said goodbye: close once the peer answers or PEER_CLOSE_WAIT_S passed
        (longer while the backlog still drains, up to the slow-close time-out)."""
        if self.state != Held.OPEN:
            return
        self.state = Held.CLOSING
        keeper = self.keeper
        self.close_tick = keeper.now_tick + keeper.ticks(keeper.close_timeout_s)
        keeper.schedule(self, keeper.now_tick + keeper.ticks(PEER_CLOSE_WAIT_S))

    def closed(self) -> None:
        """Let the backlog go out (bounded), then close the socket and tell the client."""
        if self.state == Held.CLOSED:
            return
        drained = self.wire.wait_drained(0)
        if self.state == Held.CLOSED:  # closed meanwhile: the look at the writer may switch greenlets
            return
        if not drained and self.keeper.now_tick < self.close_tick:
            if self.state == Held.OPEN:
                self.state = Held.CLOSING
                self.close_tick = self.keeper.now_tick + self.keeper.ticks(self.keeper.close_timeout_s)
            self.keeper.schedule(self, self.keeper.now_tick + 1)
            return
        self.state = Held.CLOSED
        self.keeper.forget(self)
        self.wire.abandon()
        accesslog.ended(self.client, self.sock)  # its line, while the socket can still say what went out
        try:
            self.sock.close()
        except OSError:
            pass
        if self.slot is not None:
            self.slot.release_slot()
            self.slot = None
        self.keeper.closed_count += 1
        client, self.client = self.client, None
        client.ended()
        self.release()

    def release(self) -> None:
        """Drop what could form a reference cycle with the client, so that refcounting alone frees
        a closed connection (the keeper may have frozen it out of the cyclic collector's reach)."""


class HeldWebSocket(Held):
    """A WebSocket after its handshake: wsproto's frame protocol, pings, client messages."""

    __slots__ = ("proto", "on_text", "message", "message_len", "ponged", "deadline", "on_deadline", "ping_tick",
                 "at_boundary")

    def __init__(self, keeper, sock, wire, client, proto, on_text, deadline_s, on_deadline):
        super().__init__(keeper, sock, wire, client)
        self.proto = proto
        self.on_text = on_text
        self.message = None  # the parts of a fragmented message
        self.message_len = 0
        self.ponged = True
        interval = keeper.ticks(keeper.ping_interval_s)
        self.ping_tick = keeper.now_tick + max(1, round(interval * random.uniform(0.5, 1.0)))
        self.deadline = keeper.now_tick + keeper.ticks(deadline_s) if deadline_s is not None else None
        self.on_deadline = on_deadline
        self.at_boundary = frame_boundary(proto)  # kept up to date after every read wsproto sees

    def next_tick(self) -> int:
        return self.ping_tick if self.deadline is None else min(self.ping_tick, self.deadline)

    def release(self) -> None:
        self.on_text = self.on_deadline = self.message = None
        self.proto._proto._parse_more = None  # wsproto 1.3's frame parser: a generator holding its protocol (a cycle)

    def send(self, event) -> bool:
        try:
            self.wire.write(self.proto.send(event))
        except LocalProtocolError:
            return False
        return True

    def close(self, code: int, reason: str) -> None:
        """Our close frame (through the wire, after whatever is queued), then wait for the peer's."""
        if self.state == Held.OPEN:
            self.send(CloseConnection(code, reason))
            self.closing()

    def due(self, tick: int) -> None:
        if self.state != Held.OPEN:
            self.closed()  # the peer did not answer our close in time
            return
        if self.deadline is not None and tick >= self.deadline:
            self.deadline = None
            self.on_deadline()
            if self.state != Held.OPEN:
                return
        if tick >= self.ping_tick:
            if not self.ponged:
                log.info("a %s client did not answer a ping: closing it", self.client.kind)
                self.send(CloseConnection(CloseReason.POLICY_VIOLATION, "Ping/Pong timeout"))
                self.closed()
                return
            self.ponged = False
            self.wire.write(PING_FRAME)  # the same bytes for every client: wsproto keeps no state about pings
            self.ping_tick = tick + self.keeper.ticks(self.keeper.ping_interval_s)
        self.keeper.schedule(self, self.next_tick())

    def quick(self, data: bytes) -> bool:
        """A read that is nothing but pings and pongs (an idle client's usual traffic), while
        wsproto holds no part of a frame, answered from the raw bytes (handlers/control.py):
        no greenlet, no protocol object. The pong to our empty ping is its own test."""
        if self.state != Held.OPEN or not self.at_boundary or self.wire.backlog_bytes:
            return False  # (with a backlog, the reader greenlet answers and checks the client's bound)
        if len(data) == 6 and data[0] == OP_PONG | 0x80 and data[1] == 0x80:
            self.ponged = True
            return True
        frames = control_frames(data) if data else None
        if frames is None:
            return False
        for opcode, payload in frames:
            if opcode == OP_PONG:
                self.ponged = True
            else:
                self.wire.write(pong_for(payload))
        return True

    def readable(self, data: bytes) -> None:
        """What simple-websocket's reader did with received bytes, without its greenlet: what
        `quick` left (the keeper tried it first), through wsproto, which checks it."""
        proto = self.proto
        proto.receive_data(data or None)  # None: the peer closed the TCP connection (1006)
        keep = bool(data)
        for event in proto.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self.message_len += len(event.data)
                if self.message_len > self.keeper.max_message_bytes:
                    self.send(CloseConnection(CloseReason.MESSAGE_TOO_BIG, "Message is too big"))
                    keep = False
                    break
                if not event.message_finished:
                    if self.message is None:
                        self.message = []
                    self.message.append(event.data)  # in place: a copy per fragment was quadratic
                    continue
                parts, self.message, self.message_len = self.message, None, 0
                text = event.data if parts is None else type(event.data)().join(parts + [event.data])
                if self.state == Held.OPEN:
                    self.on_text(text)
            elif isinstance(event, Ping):
                self.send(event.response())
            elif isinstance(event, Pong):
                self.ponged = True
            elif isinstance(event, CloseConnection):
                if proto.state is not ConnectionState.CLOSED:
                    # a text frame that is not UTF-8: wsproto's reason is Python's codec message ("'utf-8'
                    # codec can't decode byte 0x8c in position 0: ..."), which the client was sent
                    reason = event.reason if event.code != CloseReason.INVALID_FRAME_PAYLOAD_DATA \
                        else "a text message that is not UTF-8"
                    self.send(CloseConnection(event.code, reason))
                keep = False
        if keep and _announced_too_big(self):
            self.send(CloseConnection(CloseReason.MESSAGE_TOO_BIG, "Message is too big"))
            keep = False
        self.at_boundary = frame_boundary(proto)
        if keep and self.client is not None:
            self.client.check_bound()  # pongs and answers count towards the client's bound too
        if not keep or proto.state is ConnectionState.CLOSED:
            self.closed()


def _announced_too_big(self: HeldWebSocket) -> bool:
    """A frame whose header announces more than the message may hold: refused at its header (it was waited
    for until that much had arrived, or a ping timeout closed it)."""
    decoder = self.proto._proto._frame_decoder  # wsproto 1.3, as frame_boundary
    header = decoder.header
    return header is not None and not header.opcode.iscontrol() and \
        self.message_len + header.payload_len - decoder.payload_consumed > self.keeper.max_message_bytes


def frame_boundary(proto) -> bool:
    """wsproto's connection is open and holds no received byte or event: the next bytes start a frame."""
    decoder = proto._proto._frame_decoder  # wsproto 1.3's reader (pinned in requirements.txt): its header and buffer (tests/unit/test_conn.py)
    return proto.state is ConnectionState.OPEN and not proto._events and decoder.header is None \
        and not decoder.buffer


class HeldStream(Held):
    """An HTTP response that stays open (/sse): keep-alive comments; what the client sends is dropped."""

    __slots__ = ("keepalive", "last", "keepalive_tick")

    def __init__(self, keeper, sock, wire, client, keepalive: bytes, last: bytes):
        super().__init__(keeper, sock, wire, client)
        self.keepalive = keepalive
        self.last = last  # the body's end (a chunked body's last chunk)
        interval = keeper.ticks(keeper.keepalive_s)
        self.keepalive_tick = keeper.now_tick + max(1, round(interval * random.uniform(0.5, 1.0)))

    def next_tick(self) -> int:
        return self.keepalive_tick

    def close(self, code: int = 0, reason: str = "") -> None:
        if self.state == Held.OPEN:
            self.wire.write(self.last)
            try:
                self.sock.shutdown(_socket.SHUT_RD)  # no further request is read on this connection
            except OSError:
                pass
            self.closed()

    def due(self, tick: int) -> None:
        if self.state != Held.OPEN:
            self.closed()
            return
        if not self.wire.backlog_bytes:
            self.wire.write(self.keepalive)
        if self.wire.broken:
            self.closed()
            return
        self.keepalive_tick = tick + self.keeper.ticks(self.keeper.keepalive_s)
        self.keeper.schedule(self, self.keepalive_tick)

    def readable(self, data: bytes) -> None:
        if not data:
            self.closed()  # the client went away


def kind_of(held: Held) -> str:
    return held.client.kind if held.client is not None else "closed"


class Keeper:
    """Every held connection of one worker: the watchers' queue, the reader and the ticker."""

    def __init__(self, *, ping_interval_s: float, keepalive_s: float, max_message_bytes: int,
                 close_timeout_s: float):
        self.ping_interval_s = ping_interval_s
        self.keepalive_s = keepalive_s
        self.max_message_bytes = max_message_bytes
        self.close_timeout_s = close_timeout_s
        self.held: set[Held] = set()
        self._ready: deque[tuple[Held, bytes]] = deque()
        self._wake = Signal()
        self._wheel: dict[int, set[Held]] = {}
        self._t0 = time.monotonic()
        self.now_tick = 0
        self._tasks: list[gevent.Greenlet] = []
        self.taken_count = self.closed_count = 0  # since the last freeze, and since the last thaw
        self.frozen_count = 0  # connections held at the last freeze

    def ticks(self, seconds: float) -> int:
        return max(1, round(seconds / TICK_S))

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [gevent.spawn(self._read_loop), gevent.spawn(self._tick_loop)]
            self._tasks[0].name, self._tasks[1].name = "held-reader", "held-ticker"

    # -- taking connections over ----------------------------------------------------

    def take(self, held: Held, greenlet) -> None:
        """Own `held` from now on; `greenlet` (the request's) may end without closing its socket."""
        self._start()
        self.taken_count += 1
        held.slot = pool_slot_of(greenlet)
        self.held.add(held)
        held.watcher = gevent.get_hub().loop.io(held.sock.fileno(), 1)
        held.watcher.start(self._readable, held)
        self.schedule(held, held.next_tick())

    def forget(self, held: Held) -> None:
        self.held.discard(held)
        if held.watcher is not None:
            held.watcher.stop()
            held.watcher.close()
            held.watcher = None
        self._unschedule(held)

    def schedule(self, held: Held, tick: int) -> None:
        self._unschedule(held)
        tick = max(tick, self.now_tick + 1)
        held.tick = tick
        self._wheel.setdefault(tick, set()).add(held)

    def _unschedule(self, held: Held) -> None:
        if held.tick >= 0:
            bucket = self._wheel.get(held.tick)
            if bucket is not None:
                bucket.discard(held)
            held.tick = -1

    # -- reading ------------------------------------------------------------------------

    def _readable(self, held: Held) -> None:
        """In the hub: one non-blocking read. What needs no greenlet (a pong: nearly all an idle
        crowd sends) is handled here; anything else goes to the reader greenlet with the watcher
        stopped until it is done, so a connection's reads stay in order.

        bench/idletax.py (19,000 clients pinged every 5 s, 4 rounds interleaved): a ping cost the
        worker 11.3-11.6 µs of CPU this way against 14.5-16.6 µs when every read went through the
        reader greenlet (watcher stopped and started, a queue, a switch); what is left is mostly
        the send and recv system calls (py-spy --native)."""
        try:
            data = held.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            if data and held.quick(data):
                return
        except Exception:  # noqa: BLE001  (never out of a loop callback: the reader closes it)
            log.exception("a %s connection failed: closing it", kind_of(held))
            data = b""
        held.watcher.stop()  # started again once read: one entry in the queue per connection
        self._ready.append((held, data))
        self._wake.set()

    def _read_loop(self) -> None:
        ready = self._ready
        while True:
            self._wake.wait()
            self._wake.clear()
            while ready:
                held, data = ready.popleft()
                if held.state == Held.CLOSED:
                    continue
                try:
                    held.readable(data)
                except Exception:  # noqa: BLE001  (one client's failure must not stop the shared reader)
                    log.exception("a %s connection failed: closing it", kind_of(held))
                    held.closed()
                if held.state != Held.CLOSED and held.watcher is not None:
                    held.watcher.start(self._readable, held)
            held = data = None  # a closed connection must not wait here for the next slow read to be freed

    # -- time ---------------------------------------------------------------------------

    def step_gc(self) -> str | None:
        """Held connections out of the cyclic collector's reach (or back, once many closed)."""
        action = gc_step(self.taken_count, self.closed_count, self.frozen_count)
        if action == "thaw":
            gc.unfreeze()
            gc.collect()
            self.closed_count, self.frozen_count, self.taken_count = 0, 0, len(self.held)
        elif action == "freeze":
            gc.collect()  # nothing unreachable may be frozen; this scans only what came since the last freeze
            gc.freeze()
            self.taken_count, self.frozen_count = 0, len(self.held)
        return action

    def _tick_loop(self) -> None:
        gc_every = self.ticks(GC_STEP_S)
        while True:
            gevent.sleep(TICK_S)
            now = int((time.monotonic() - self._t0) / TICK_S)
            while self.now_tick < now:
                self.now_tick += 1
                if self.now_tick % gc_every == 0:
                    self.step_gc()
                bucket = self._wheel.pop(self.now_tick, None)
                if not bucket:
                    continue
                for held in bucket:
                    held.tick = -1
                    try:
                        held.due(self.now_tick)
                    except Exception:  # noqa: BLE001  (one client's failure must not stop the ticker)
                        log.exception("a %s connection failed: closing it", kind_of(held))
                        held.closed()
