"""How a worker takes connections from the kernel's accept queue, and how many handshakes it runs at once.

History. gevent's StreamServer accepts at most `max_accept` connections per wake-up of the
listener's watcher (100 by default), and gunicorn's gevent worker lowers that to 1 when it runs
several workers. The worker's loop wakes the watcher only between batches of the handshakes it
already accepted, so its accept rate followed its handshake rate, and in a storm the kernel's
accept queue (BACKLOG 4096 = net.core.somaxconn) filled and dropped SYNs, which the clients resent
1 s (then 3 s) later. Measured (bench/idle.py storm, 10,000 /ws connects offered within one second,
docs/benchmarks.md "Connect storms, fifth session"): with gunicorn's choice the queue overflowed
762-950 times (1 worker) and 2,011-4,433 times (7 workers); accepting up to MAX_ACCEPT (4096) per
wake-up nothing overflowed. The handshake rate did not change (1,300-1,600/s: the CPU of a
handshake, not the accept, is the limit). But with 4096 every accepted connection got its greenlet
at once, and in the 100,000-client crowd on 7 workers with REDIS_URL a worker holding thousands of
started handshakes missed leader-lease renewals: 22-37 lease changes and 6,000-10,400 held clients
closed by the relay, none with gunicorn's pacing ("MAX_ACCEPT during the 100,000 crowd").

So (`PacedServer`, HANDSHAKE_CONCURRENCY, opt-in): accept eagerly — every wake-up of the listener drains
the kernel's queue — but start at most HANDSHAKE_CONCURRENCY handshakes at a time per listener.
The others wait here as plain sockets in a FIFO (no greenlet each); a handshake's slot is freed
when its connection's first request is done (the /ws and /sse routes hand their socket to the
Keeper, webapp/conn.py, and return; a keep-alive connection waiting for its next request no longer
counts) or its greenlet ends, and the freed slot starts the oldest waiting socket. Bounds:

- the queue: a waiting socket keeps a place in gunicorn's pool (WORKER_CONNECTIONS, itself under
  the open-file limit): once the pool's free places are all promised to waiting sockets, the
  server stops accepting and the kernel's queue holds the rest, as before;
- time: a socket that waited ACCEPT_WAIT_TIMEOUT_S without a slot is answered `503` (JSON,
  `Retry-After: 1`, `Connection: close`) and closed: its client has most likely given up, and a
  reconnecting client is told to come back rather than served a handshake it stopped waiting for;
- a socket whose client already closed is dropped without a handshake; one that has sent nothing
  yet waits on a watcher (no slot, no greenlet) until its request arrives, so a silent client
  cannot sit on a slot for gunicorn's 5 s keep-alive time-out;
- slow clients: a handshake that held its slot HANDSHAKE_SLOT_MAX_S (1 s) loses it to the next
  waiting socket and goes on without one (a client sending its request or body slowly costs no CPU
  meanwhile), so 32 slow clients cannot stop a worker's handshakes for gunicorn's 5 s keep-alive
  time-out or a body's 30 s.

A freed slot starts the next socket in the loop's next iteration (a 0 s timer), not in the same
pass over gevent's callbacks: there each release would append one more handshake, and gevent looks
at the clock only every 50 callbacks, so the loop's timers and sockets (the leader lease, pings,
flushes) would wait behind a long run of handshakes.

Measured (docs/benchmarks.md, "Connect storms, sixth session"): 10,000 /ws connects within one
second, 3 rounds each on 1 and 7 workers: 0 ListenOverflows with a bound of 32 (850-930 and
10,580-11,337 with gunicorn's pacing), all served, handshakes 1,379-1,558/s. But in the 100,000
crowd on 7 workers (connects offered at 1,500/s for four minutes, ~400/s served) the per-worker
queues were unfair — what gunicorn's pacing leaves in the kernel's one queue, taken by whichever
worker is free, waited here in the queue of the worker that woke first — and 1,057 clients were
answered 503 after 30 s; the lease changed 33 times (no held client closed). So
HANDSHAKE_CONCURRENCY is opt-in (default 0 = gunicorn's server and pacing).

/metrics shows the slots and the queue (relayhouse_handshakes_in_flight, _waiting, their maxima,
relayhouse_accept_dropped_total, relayhouse_handshakes_slow_total): `stats()`. MAX_ACCEPT
(`eager_server`) is the older, unbounded variant, used only with HANDSHAKE_CONCURRENCY=0.
"""

from __future__ import annotations

import json
import socket
import time
import weakref
from collections import deque

from gevent import getcurrent
from gevent.baseserver import _handle_and_close_when_done
from gevent.server import StreamServer

from handlers.probes import response
from webapp import clientgate

ACCEPT_BATCH = 4096  # accepts per wake-up of the listener: the kernel's whole queue (somaxconn here)
SWEEP_S = 0.5  # how often waiting sockets are checked against ACCEPT_WAIT_TIMEOUT_S
BUSY_ANSWER = response(503, json.dumps({"error": "the server is busy with a connect storm: retry"}).encode(),
                       retry_after=1)
READY, QUIET, GONE = "ready", "quiet", "gone"


def eager_server(max_accept: int) -> type:
    """A StreamServer class that accepts up to `max_accept` connections per wake-up, whatever gunicorn
    asks (its gevent worker sets `server.max_accept = 1` on each server when it has several workers;
    that wish is kept in `asked_max_accept`, not applied). Every accepted connection gets its greenlet
    at once: no bound on handshakes in flight (HANDSHAKE_CONCURRENCY=0 only)."""
    if max_accept < 1:
        raise ValueError(f"max_accept must be at least 1, not {max_accept}")

    class EagerStreamServer(StreamServer):
        asked_max_accept: int | None = None

        @property
        def max_accept(self) -> int:
            return max_accept

        @max_accept.setter
        def max_accept(self, value: int) -> None:
            self.asked_max_accept = value

    return EagerStreamServer


def peer_state(sock) -> str:
    """READY: the client sent something; GONE: it closed (or the socket failed); QUIET: nothing yet.
    One non-blocking peek: nothing is taken from the socket. (A gevent socket with a time-out would
    wait for the hub on EAGAIN, and this runs in the hub: its time-out is 0 for the peek.)"""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return QUIET
    except OSError:
        return GONE
    finally:
        sock.settimeout(timeout)
    return READY if data else GONE


def answer_busy(sock) -> None:
    """503 and close, without blocking: what the client sent is read first, so that closing does not
    reset the connection before the answer is read."""
    try:
        sock.setblocking(False)
        for _ in range(4):
            if not sock.recv(65536):
                break
    except OSError:
        pass
    try:
        sock.send(BUSY_ANSWER)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class PacedServer(StreamServer):
    """Drains the listen queue on every wake-up; runs at most `handshake_concurrency` handshakes."""

    instances: weakref.WeakSet = weakref.WeakSet()
    handshake_concurrency = 32
    wait_timeout_s = 30.0
    slot_max_s = 1.0
    asked_max_accept: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__.pop("full", None)  # set_spawn put the pool's own `full` here: ours counts the queue too
        self._waiting: deque = deque()  # (sock, address, accepted_at), oldest first
        self._quiet: dict = {}  # sock -> (its read watcher, accepted_at), for sockets that sent nothing yet
        self._holding: dict = {}  # greenlet holding a handshake slot -> when it got it
        self._sweeper = None
        self._next_turn = None  # a 0 s timer: the next loop iteration starts what freed slots allow
        self.in_flight_max = self.waiting_max = 0
        self.dropped = {"expired": 0, "gone": 0}
        self.slow = 0  # slots taken back from handshakes that held them past slot_max_s
        PacedServer.instances.add(self)

    @property
    def max_accept(self) -> int:
        return ACCEPT_BATCH

    @max_accept.setter
    def max_accept(self, value: int) -> None:
        self.asked_max_accept = value  # gunicorn's 1 with several workers: kept, not applied

    @property
    def in_flight(self) -> int:
        return len(self._holding)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._quiet)

    def full(self) -> bool:
        """No pool place left that is not promised to a waiting socket (BaseServer then stops accepting
        and starts again when the pool releases a place)."""
        if self.pool is None:
            return False
        return self.pool.free_count() <= self.waiting

    def _start_accepting_if_started(self, _event=None) -> None:
        """The pool gave a place back (BaseServer links this to its semaphore): a waiting socket may
        start now, and the server may accept again."""
        if self.started:
            self.dispatch()
        super()._start_accepting_if_started(_event)

    def start_accepting(self) -> None:
        super().start_accepting()
        if self.__dict__.get("_sweeper") is None:
            self._sweeper = self.loop.timer(SWEEP_S, SWEEP_S)
            self._sweeper.start(self._sweep)

    def close(self) -> None:
        for name in ("_sweeper", "_next_turn"):
            timer = self.__dict__.pop(name, None)  # absent when __init__ itself failed
            if timer is not None:
                timer.stop()
                timer.close()
        for sock, (watcher, _) in list(self.__dict__.get("_quiet", {}).items()):
            watcher.stop()
            watcher.close()
            answer_busy(sock)
        self.__dict__.get("_quiet", {}).clear()
        waiting = self.__dict__.get("_waiting", ())
        while waiting:  # never started: they get the busy answer rather than silence
            answer_busy(waiting.popleft()[0])
        super().close()

    # -- accepting -----------------------------------------------------------------------

    def do_handle(self, *args) -> None:
        """Called for each accepted connection, in the accept loop (the hub): queue it, start what fits."""
        self._waiting.append((args[0], args[1], time.monotonic()))
        self.waiting_max = max(self.waiting_max, self.waiting)
        self.dispatch()

    def dispatch(self) -> None:
        """Start the oldest waiting sockets while a handshake slot and a pool place are free."""
        now = time.monotonic()
        while self._waiting and len(self._holding) < self.handshake_concurrency:
            if self.pool is not None and self.pool.free_count() <= 0:
                break
            sock, address, accepted_at = self._waiting.popleft()
            if now - accepted_at > self.wait_timeout_s:
                self.dropped["expired"] += 1
                answer_busy(sock)
                continue
            state = peer_state(sock)
            if state == GONE:
                self.dropped["gone"] += 1
                try:
                    sock.close()
                except OSError:
                    pass
                continue
            if state == QUIET:
                self._watch(sock, address, accepted_at)
                continue
            greenlet = self._spawn(self._serve, sock, address)
            self._holding[greenlet] = now
            self.in_flight_max = max(self.in_flight_max, len(self._holding))

    def _serve(self, sock, address) -> None:
        try:
            _handle_and_close_when_done(self._handle, self.do_close, (sock, address))
        finally:
            self.release(getcurrent())

    def release(self, greenlet) -> bool:
        """The handshake of `greenlet`'s connection is over: its slot starts the next waiting socket, in
        the loop's next iteration. Started at once, the next handshake would run in the same pass over
        gevent's callbacks (which a freed slot would extend again and again): the loop must poll its
        sockets and run its timers between two batches of at most handshake_concurrency handshakes."""
        if self._holding.pop(greenlet, None) is None:
            return False
        if self._waiting and self._next_turn is None:  # (after close() nothing waits)
            self._next_turn = self.loop.timer(0.0)
            self._next_turn.start(self._turn)
        return True

    def _turn(self) -> None:
        turn, self._next_turn = self._next_turn, None
        if turn is not None:
            turn.stop()
            turn.close()
        self.dispatch()

    # -- sockets that wait -----------------------------------------------------------------

    def _watch(self, sock, address, accepted_at) -> None:
        watcher = self.loop.io(sock.fileno(), 1)
        self._quiet[sock] = (watcher, accepted_at)
        watcher.start(self._readable, sock, address, accepted_at)

    def _readable(self, sock, address, accepted_at) -> None:
        entry = self._quiet.pop(sock, None)
        if entry is None:
            return
        watcher = entry[0]
        watcher.stop()
        watcher.close()
        self._waiting.appendleft((sock, address, accepted_at))  # it waited longer than those behind it
        self.dispatch()

    def _sweep(self) -> None:
        """In the hub, every SWEEP_S: answer the sockets that waited too long, and take the slot back
        from a handshake that held it past slot_max_s (a slow client: waiting for the rest of its
        request, or its body, is no work; the handshake goes on without a slot)."""
        now = time.monotonic()
        slow = [g for g, since in self._holding.items() if now - since > self.slot_max_s]
        for greenlet in slow:
            del self._holding[greenlet]
        self.slow += len(slow)
        deadline = now - self.wait_timeout_s
        while self._waiting and self._waiting[0][2] < deadline:
            self.dropped["expired"] += 1
            answer_busy(self._waiting.popleft()[0])
        for sock in [s for s, (_, accepted_at) in self._quiet.items() if accepted_at < deadline]:
            watcher = self._quiet.pop(sock)[0]
            watcher.stop()
            watcher.close()
            self.dropped["expired"] += 1
            answer_busy(sock)
        self.dispatch()  # also what a pool place given back allows (see _start_accepting_if_started)
        if not self.full():
            self._start_accepting_if_started()


def paced_server(handshake_concurrency: int, wait_timeout_s: float, slot_max_s: float = 1.0) -> type:
    if handshake_concurrency < 1:
        raise ValueError(f"handshake_concurrency must be at least 1, not {handshake_concurrency}")

    class Paced(PacedServer):
        pass

    Paced.handshake_concurrency = handshake_concurrency
    Paced.wait_timeout_s = wait_timeout_s
    Paced.slot_max_s = slot_max_s
    return Paced


def handshake_done() -> None:
    """The current greenlet's connection has been answered (or handed over): free its slot."""
    current = getcurrent()
    for server in list(PacedServer.instances):
        if server.release(current):
            return


def install(ggevent, worker, settings) -> None:
    """In gunicorn's post_worker_init: the server class its gevent worker will build, and the hook
    that frees a handshake slot after a connection's first request (not at its end: a keep-alive
    connection waiting for its next request is no handshake)."""
    if settings.handshake_concurrency:
        ggevent.StreamServer = paced_server(settings.handshake_concurrency, settings.accept_wait_timeout_s,
                                            settings.handshake_slot_max_s)
        handle_request = worker.handle_request

        def handle_request_then_free_the_slot(*args, **kwargs):
            try:
                return handle_request(*args, **kwargs)
            finally:
                handshake_done()

        worker.handle_request = handle_request_then_free_the_slot
    elif settings.max_accept:
        ggevent.StreamServer = eager_server(settings.max_accept)
    # LEADER_ACCEPTS=false: the lease holder leaves new connections to the other workers (webapp/clientgate.py)
    ggevent.StreamServer = clientgate.gated(ggevent.StreamServer)


def stats() -> dict:
    """This worker's handshake slots and waiting sockets, over its listeners (for /metrics)."""
    servers = [s for s in list(PacedServer.instances) if not s.closed]
    return {
        "handshakes_in_flight": sum(s.in_flight for s in servers),
        "handshakes_in_flight_max": max((s.in_flight_max for s in servers), default=0),
        "accept_waiting": sum(s.waiting for s in servers),
        "accept_waiting_max": max((s.waiting_max for s in servers), default=0),
        "accept_dropped": {reason: sum(s.dropped[reason] for s in servers) for reason in ("expired", "gone")},
        "handshakes_slow": sum(s.slow for s in servers),
    }
