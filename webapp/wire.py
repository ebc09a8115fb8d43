"""The one write path to a client socket: whole frames, in order, never blocking the caller.

simple-websocket writes with `sock.send` (which may write part of a frame) from
two greenlets (the handler and its reader, which answers pings and closes).
Giving it a `WireSocket` in place of the raw socket routes every byte through
`write`: it tries one non-blocking send and, only if the socket is full, queues
the rest for a writer greenlet that lives while the backlog does. No greenlet
switch happens between checking the backlog and writing, so frames can never
interleave.

Dropping the backlog (a slow consumer) keeps framing whole: the frame being
written is finished, and so is the rest of a frame whose first bytes went out
before its writer ran.
"""

import socket
from collections import deque

import gevent
from gevent.event import Event as Signal
from gevent.monkey import get_original
from gevent.socket import wait_write

_poll = get_original("select", "poll")  # the real one: a zero-timeout look, and fds past FD_SETSIZE
_POLLOUT = get_original("select", "POLLOUT")
_HUNG_UP = get_original("select", "POLLRDHUP") | get_original("select", "POLLHUP") | get_original("select", "POLLERR")


class WireSocket:
    """A socket stand-in whose writes are whole, ordered and non-blocking for the caller."""

    # one per connection: slots, and the backlog and its signal only while there is a backlog,
    # keep an idle connection small
    __slots__ = ("sock", "_send_now", "_backlog", "backlog_bytes", "backlog_weight", "_writer", "_drained",
                 "broken", "_corked", "drained_bytes")

    def __init__(self, sock):
        self.adopt(sock)
        # (bytes, events, whole): whole is False for the rest of a frame already partly sent,
        # which must be written whatever is discarded after it
        self._backlog: deque[tuple[memoryview | bytes, int, bool]] | None = None
        self.backlog_bytes = 0
        self.backlog_weight = 0  # events held in the backlog (the hub's bound)
        self.drained_bytes = 0  # bytes the writer greenlet has sent from the backlog, ever (a position in it)
        self._writer: gevent.Greenlet | None = None
        self._drained: Signal | None = None  # set when the writer is done
        self.broken = False
        self._corked: list[bytes] | None = None

    def adopt(self, sock) -> None:
        """Write to `sock` from now on: a gevent socket, or (once held, webapp/conn.py) a plain
        non-blocking one on the same file descriptor."""
        self.sock = sock
        # gevent's socket wraps a non-blocking stdlib socket: writing to that directly is the
        # same non-blocking attempt minus a Python call per write (the hub does thousands a flush)
        raw = getattr(sock, "_sock", sock)
        self._send_now = raw.send

    # -- the socket interface simple-websocket uses --------------------------

    def send(self, data: bytes) -> int:
        self.write(data)
        return len(data)

    sendall = send

    def recv(self, bufsize: int) -> bytes:
        return self.sock.recv(bufsize)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Called by simple-websocket's reader when it stops: give the backlog a moment, then close."""
        self.wait_drained(timeout=1.0)
        self.sock.close()

    # -- the relay's interface ---------------------------------------------------

    def cork(self) -> None:
        """Collect writes until `uncork`: a handshake's answer and the first frames go out in one
        system call (on loopback a send costs the kernel's whole TCP path; a storm of
        connections is mostly that)."""
        self._corked = []

    @property
    def corked(self) -> bool:
        return self._corked is not None

    @property
    def corked_bytes(self) -> int:
        return sum(map(len, self._corked)) if self._corked else 0

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            self.write(b"".join(corked))

    def write(self, data: bytes, weight: int = 0) -> None:
        """Queue `data` (whole frames) after everything written before it."""
        if self._corked is not None:
            self._corked.append(data)
            return
        if self._writer is None:  # nothing queued or in flight: try to write now
            if self.broken:
                return
            try:
                sent = self._send_now(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.broken = True
                return
            if sent == len(data):
                return
            whole = sent == 0
            data = memoryview(data)[sent:]
            if self._backlog is None:
                self._backlog = deque()
            self._drained = Signal()
            self._writer = gevent.spawn(self._drain)
            self._backlog.append((data, weight, whole))
            self.backlog_bytes += len(data)
            self.backlog_weight += weight
            return
        self._backlog.append((data, weight, True))
        self.backlog_bytes += len(data)
        self.backlog_weight += weight

    def discard_backlog(self, events_only: bool = False) -> int:
        """Drop queued frames; the one being written (if any) is finished, keeping framing whole,
        and so is the rest of a frame already begun. With `events_only`, frames that carry no
        events (weight 0: a snapshot, a reply, a pong) stay queued. Returns the event frames dropped."""
        if not self._backlog:
            return 0
        dropped = 0
        kept = []
        for entry in self._backlog:
            chunk, weight, whole = entry
            if not whole or (events_only and not weight):
                kept.append(entry)
                continue
            dropped += weight > 0
            self.backlog_bytes -= len(chunk)
            self.backlog_weight -= weight
        self._backlog.clear()
        self._backlog.extend(kept)
        return dropped

    def has_room(self) -> bool:
        """Nothing queued here and the kernel's send buffer has room (POLLOUT, looked at without waiting):
        what was written has really gone towards the client, not merely been dropped from the backlog."""
        if self._backlog:
            return False
        ready = self._ready_now(_POLLOUT)
        return bool(ready)  # None (closed): it will not catch up

    def peer_gone(self) -> bool:
        """The peer hung up or reset (looked at without waiting and without reading)."""
        if self.broken:
            return True
        ready = self._ready_now(_HUNG_UP)
        return ready is None or ready

    def _ready_now(self, mask: int) -> bool | None:
        """Whether the socket shows any of `mask`'s poll events now (no waiting); None once it is closed."""
        try:
            poller = _poll()
            poller.register(self.sock.fileno(), mask)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return None

    def queued_frames(self) -> int:
        """Entries waiting in the backlog (at least the event frames not yet begun)."""
        return len(self._backlog) if self._backlog else 0

    def abandon(self) -> None:
        """Nothing more goes out: the backlog is dropped and a writer still waiting for room is
        stopped (and its fd watcher with it), so the socket can be closed under no one."""
        self.broken = True
        self.discard_backlog()
        if self._writer is not None:
            self._writer.kill(block=True, timeout=1.0)

    def wait_drained(self, timeout: float) -> bool:
        drained = self._drained
        return True if self._writer is None or drained is None else drained.wait(timeout)

    def _drain(self) -> None:
        backlog = self._backlog
        try:
            while backlog and not self.broken:
                chunk, weight, _ = backlog.popleft()
                view = memoryview(chunk)
                try:
                    while view:
                        try:
                            sent = self._send_now(view)
                        except BlockingIOError:
                            wait_write(self.sock.fileno())  # this greenlet only waits for room
                            continue
                        self.backlog_bytes -= sent
                        self.drained_bytes += sent
                        view = view[sent:]
                finally:
                    self.backlog_bytes -= len(view)
                    self.backlog_weight -= weight
        except OSError:
            self.broken = True
        finally:
            if self.broken:
                for chunk, weight, _ in backlog:
                    self.backlog_bytes -= len(chunk)
                    self.backlog_weight -= weight
                backlog.clear()
            self._writer = None
            self._drained.set()


CONFLATE_SEND_BUFFER_BYTES = 16 * 1024
# the least SO_SNDBUF a client that takes every event gets: a fast reader of a 6 MB snapshot against a
# 64 KiB bound, with live events behind it, was closed as slow through a 16 KiB one (its snapshot waited in
# the relay's queue instead of the kernel's, and the live events behind it passed the bound)
SEND_BUFFER_FLOOR_BYTES = 256 * 1024


def kernel_wmem_max(path: str = "/proc/sys/net/ipv4/tcp_wmem") -> int | None:
    """The most a TCP send buffer grows to on its own (tcp_wmem's third figure), None when unknown."""
    try:
        with open(path) as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return None


def send_buffer_cap(queue_max_bytes: int, wmem_max: int | None) -> int | None:
    """The SO_SNDBUF every client socket gets so that the kernel holds at most half of WS_QUEUE_MAX_BYTES
    (the kernel doubles the figure) on top of the relay's own queue; None where the kernel's own growth
    stays within that anyway (the default 8 MiB against 4 MiB here: nothing changes).

    The bound counts the relay's queue only, and the kernel grew a stalled client's send buffer to up to
    4 MiB past it (an outside audit: 410-490 KB in a slow reader's socket at WS_QUEUE_MAX_BYTES=200000, its
    queue empty; tests/integration/test_ws_resume.py: dropped after 2,700 events of 1.1 KB at a 256 KiB
    bound). Capped, at most max(bound / 2, 512 KiB) waits in the relay's kernel (600 events there)."""
    cap = max(queue_max_bytes // 4, SEND_BUFFER_FLOOR_BYTES)
    return None if wmem_max is not None and cap * 2 >= wmem_max else cap


def size_send_buffer(sock, on_slow: str, cap: int | None) -> None:
    """A new client socket's send buffer: small for on_slow=conflate (see limit_send_buffer), else `cap`
    (the runtime's send_buffer_cap), else the kernel's own."""
    if on_slow == "conflate":
        limit_send_buffer(sock)
    elif cap is not None:
        limit_send_buffer(sock, cap)  # the kernel's part of the bound


def limit_send_buffer(sock, nbytes: int = CONFLATE_SEND_BUFFER_BYTES) -> None:
    """Cap the kernel's send buffer of a client on a slow link that asked for conflation.

    Linux grows a loopback or LAN send buffer up to tcp_wmem's maximum (4 MiB here): a
    client reading 4 KiB/s would first be shown minutes of old events from it, and the
    relay would notice it is slow only once those megabytes were full (bench mixed run:
    17 s at 1000 events/s). Capped (the kernel doubles the figure), what it is shown is
    never older than ~32 KiB plus half its bound at its own reading rate (a 32 KiB window
    still carries ~300 KB/s at a 100 ms round trip: more than a conflating client needs).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, nbytes)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a test double): nothing to cap
