"""The leader's outbox: groups of events waiting for the append script, bounded by BUS_OUTBOX_MAX events.

While Redis does not take events (down, stalled, refusing writes at
maxmemory), the leader's ingest keeps numbering what the upstream sends and
this queue is where it waits. The bound is kept by back-pressure, not by
dropping: once the outbox holds `max_events`, `wait_for_room()` (the upstream
reader's `hold`, called after each read) blocks until the publisher has taken
some out, so the leader stops reading the upstream and the rest waits in the
upstream's socket and its own buffers. The reader's silence check is off
while it is held: a long hold must not make the relay drop the connection,
and with it what the kernel had buffered. Nothing the relay read is dropped
for being over the bound; it may be over by at most one read (256 KiB of
frames). A `POST /publish` while it is full is refused at once (a 503: its
caller is told, nothing is published later).

What does leave the outbox unpublished is said out loud: when the leader
stops leading (its lease lapsed with Redis away, or the append was fenced),
what is still queued is discarded — logged, counted in `discarded`, shown in
/health — and it never had a seq, so no client sees a gap: it is what the
upstream sent that no leader relayed, like frames sent while no relay is
connected.

While Redis refuses every append (OOM at maxmemory with `noeviction`,
READONLY after a failover) the lease can still be renewed — PEXPIRE is
allowed at maxmemory — so the leader stays the leader with its upstream held.
It does not step down: the next leader would meet the same Redis, and the
outbox (events the upstream already sent) would be lost with the hand-over.
It says so instead: the failing appends are kept here (`append_failed`,
`appended`), one ERROR line per 10 s, and /health turns degraded once the
outbox has been full, or the appends have failed, for longer than
handlers/health.py's BUS_STUCK_GRACE_S.
"""

import logging
import time
from collections import deque
from typing import Callable

from gevent.event import Event as Signal

from handlers.events import Event
from webapp.bus.receipt import Receipt
from webapp.logs import Throttle, held_note

log = logging.getLogger(__name__)

FULL_ERROR = "the leader's outbox is full (BUS_OUTBOX_MAX): Redis is not taking events; retry later"


class Outbox:
    """A FIFO of (events, receipt) groups with a running event count, a bound and a back-pressure gate."""

    def __init__(self, max_events: int, on_full: Callable[[], None] = lambda: None):
        self.max_events = max_events
        self.on_full = on_full  # counts the bound hit (relayhouse_bound_hits_total{bound="bus_outbox"})
        self._groups: deque[tuple[list[Event], Receipt | None]] = deque()
        self.events = 0  # kept as groups come and go: summing the deque per read would cost O(n)
        self.restored = 0  # events set aside when leading stopped and published in this worker's next term
        self.peak = 0  # the most events it ever held
        self.times_full = 0  # how often it reached the bound (each time the upstream was paused)
        self.full_since: float | None = None  # unix time it last became full, while full
        self.discarded = 0  # events dropped unpublished when leading stopped (never given a seq)
        self.refused = 0  # POST /publish frames refused because it was full
        self.append_error: str | None = None  # the last append failure, while no append has worked since
        self.append_failing_since: float | None = None  # unix time of the first failure since the last success
        self.append_failures = 0  # failed append calls, in all
        self._room = Signal()
        self._room.set()
        self._said = Throttle()

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def full(self) -> bool:
        return self.events >= self.max_events

    def put(self, events: list[Event], ticket: Receipt | None) -> bool:
        """Queue one group; never blocks. A group with a receipt (POST /publish) is refused when full."""
        if ticket is not None and self.full:
            self.refused += 1
            ticket.fail(FULL_ERROR)
            return False
        self._groups.append((events, ticket))
        self.events += len(events)
        self.peak = max(self.peak, self.events)
        if self.full and self._room.is_set():
            self._room.clear()
            self.times_full += 1
            self.full_since = time.time()
            self.on_full()
            held = self._said.allow("full")
            if held is not None:
                log.warning("bus: outbox full (%d events, BUS_OUTBOX_MAX %d): the leader stops reading the "
                            "upstream until Redis takes events again%s", self.events, self.max_events,
                            held_note(held))
        return True

    def take(self) -> tuple[list[Event], Receipt | None]:
        events, ticket = self._groups.popleft()
        self.events -= len(events)
        if not self.full and not self._room.is_set():
            self._room.set()
            self.full_since = None
        return events, ticket

    def append_failed(self, text: str) -> None:
        """An append call failed (the publisher retries it); said once per 10 s while they keep failing."""
        now = time.time()
        if self.append_failing_since is None:
            self.append_failing_since = now
        self.append_error = text
        self.append_failures += 1
        held = self._said.allow("append")
        if held is not None:
            log.error("bus: Redis appends failing for %.0f s (%s); %d events wait in the outbox%s, retried "
                      "until Redis takes them%s", now - self.append_failing_since, text, self.events,
                      " and the upstream is held" if self.full else "", held_note(held))

    def appended(self) -> None:
        """An append call worked: whatever failed before is over."""
        if self.append_failing_since is not None:
            log.warning("bus: Redis takes appends again after %.0f s of failures",
                        time.time() - self.append_failing_since)
        self.append_failing_since = None
        self.append_error = None

    def stuck_for(self, now: float) -> tuple[float, float]:
        """Seconds it has been full, and seconds every append has failed (0.0 for either that is not so)."""
        full_s = 0.0 if self.full_since is None else max(0.0, now - self.full_since)
        failing_s = 0.0 if self.append_failing_since is None else max(0.0, now - self.append_failing_since)
        return full_s, failing_s

    def first_size(self) -> int:
        return len(self._groups[0][0])

    def wait_for_room(self) -> None:
        """Block (this greenlet only) while the outbox is full: the upstream reader's back-pressure."""
        self._room.wait()

    def discard(self, reason: str) -> int:
        """Drop every queued group (leading stopped); their receipts fail with `reason`. Returns the events."""
        n = 0
        while self._groups:
            events, ticket = self.take()
            n += len(events)
            if ticket is not None:
                ticket.fail(reason)
        self.append_failing_since = None  # leading stopped: its failing appends are no longer this worker's
        self.append_error = None
        if n:
            self.discarded += n
            log.error("bus: %d queued events not published (%s); they were never given a seq", n, reason)
        return n

    def status(self) -> dict:
        return {"events": self.events, "max": self.max_events, "peak": self.peak, "full": self.full,
                "full_since": self.full_since, "times_full": self.times_full, "discarded": self.discarded,
                "refused_publishes": self.refused, "restored": self.restored, "append_error": self.append_error,
                "append_failing_since": self.append_failing_since, "append_failures": self.append_failures}
