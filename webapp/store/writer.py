"""The background store writer: batches by count and time, spools before inserting, replays in order, exactly once.

Exactly once: this greenlet is the only writer. It knows the store's highest
seq after every successful insert; after any failure it asks the store again
before inserting, and only rows above that maximum are sent. A batch never
spans two daily partitions, so each INSERT is one atomic part and "the maximum
is in" means "everything up to it is in".
"""

import logging
import time
from typing import Callable

import gevent
from gevent.event import Event as Signal

from handlers.backoff import reconnect_delay_ms
from handlers.events import Event
from webapp.store.base import Store, StoreError
from webapp.store.spool import Spool, SpoolFull

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
FULL_SAID_EVERY_S = 60.0  # "spool cannot take a batch" at most this often


def split_by_day(events: list[Event]) -> list[list[Event]]:
    """Consecutive runs of events that fall in the same UTC day (= one partition)."""
    runs: list[list[Event]] = []
    day = None
    for e in events:
        d = e.ts // DAY_MS
        if d != day:
            runs.append([])
            day = d
        runs[-1].append(e)
    return runs


class StoreWriter:
    def __init__(self, store: Store, spool: Spool, *, batch_rows: int, batch_ms: int,
                 retry_min_ms: int = 200, retry_max_ms: int = 5000,
                 on_written: Callable[[int, float], None] = lambda rows, seconds: None,
                 on_dropped: Callable[[int, int], None] = lambda first, last: None,
                 in_thread: Callable = lambda fn, *args: fn(*args),
                 may_write: Callable[[], bool] = lambda: True):
        self.store = store
        self.spool = spool
        self.batch_rows = batch_rows
        self.batch_s = batch_ms / 1000.0
        self.retry_min_ms = retry_min_ms
        self.retry_max_ms = retry_max_ms
        self.on_written = on_written
        self.on_dropped = on_dropped  # (first seq, last seq) of a batch lost to persistence
        self.in_thread = in_thread  # file I/O off the hub
        # the fence (a cluster's lease): checked before every insert; False means this writer may
        # not write now (another worker may), so it inserts nothing and holds what it has
        self.may_write = may_write
        self.pending: list[Event] = []
        self.store_max: int | None = None  # None: unknown, ask before the next insert
        self.ok = True
        self.last_error: str | None = None
        self.spool_full = False
        self._full_said_at = float("-inf")
        self.dropped = 0  # events that could be neither spooled nor inserted
        self.written = 0
        self._backlog = False  # the spool holds records not yet in the store
        self._failures = 0
        self._retry_at = 0.0
        self._wake = Signal()
        self._idle = Signal()
        self._idle.set()

    # -- the ingest side --------------------------------------------------------------

    def discard_pending(self) -> None:
        self.pending = []

    def enqueue(self, events: list[Event]) -> None:
        self.pending.extend(events)
        if len(self.pending) >= self.batch_rows:
            self._wake.set()

    @property
    def spooled_events(self) -> int:
        return self.spool.events

    # -- the loop --------------------------------------------------------------------------

    def start_from(self, store_max: int | None, spooled: bool) -> None:
        self.store_max = store_max
        self._backlog = spooled

    def run(self) -> None:
        while True:
            self._wake.wait(self.batch_s)
            self._wake.clear()
            self.cycle()

    def cycle(self) -> None:
        self._idle.clear()
        try:
            if not self.may_write():
                return  # not now: what is pending waits (a lost lease discards it, see discard_pending)
            batch, self.pending = self.pending, []
            if batch:
                self._take(batch)
            if self._backlog and time.monotonic() >= self._retry_at:
                self._drain()
        except OSError as exc:
            # the spool's disk failed outside an append (reading it back, removing
            # segments): say so and try again next cycle; the writer must not die
            log.error("spool I/O failed: %s", exc)
            self._retry_at = time.monotonic() + self.retry_max_ms / 1000.0
        finally:
            self._idle.set()

    def flush(self, timeout_s: float) -> bool:
        """Write everything pending now (SIGTERM); True when nothing is left unspooled."""
        deadline = time.monotonic() + timeout_s
        self._idle.wait(timeout_s)
        self._retry_at = 0.0
        while not self.may_write() and time.monotonic() < deadline:
            gevent.sleep(0.05)  # the fence may open again (a lease renewed); a lost one times out
        self.cycle()
        while self._backlog and time.monotonic() < deadline and self.ok and self.may_write():
            self.cycle()
        return not self.pending

    # -- one batch ------------------------------------------------------------------------

    def _take(self, batch: list[Event]) -> None:
        try:
            self.in_thread(self.spool.append, batch)
            self.spool_full = False
        except (SpoolFull, OSError) as exc:
            now = time.monotonic()
            # said once per episode: near the bound a smaller batch may still fit between two
            # that do not, which must not turn one full disk into a line every few batches
            if not self.spool_full and now - self._full_said_at >= FULL_SAID_EVERY_S:
                log.error("spool cannot take a batch of %d events: %s", len(batch), exc)
                self._full_said_at = now
            self.spool_full = True
            if self._backlog or not self._insert(batch):
                # neither durable locally nor in the store: counted, and said loudly
                self.dropped += len(batch)
                log.error("dropped %d events from persistence (spool full, store unavailable)", len(batch))
                self.on_dropped(batch[0].seq, batch[-1].seq)  # pending is in seq order
            return
        if self._backlog:
            return  # order: it waits behind what the spool already holds
        if self._insert(batch):
            self.in_thread(self.spool.clear)
        else:
            self._backlog = True

    def _drain(self) -> None:
        """Write the spool back in order, then empty it."""
        records = self.in_thread(self.spool.records)
        for record in records:
            if not self._insert(record.events):
                return
        self.in_thread(self.spool.clear)
        self._backlog = False
        log.info("spool written back: the store has every event")

    def _insert(self, events: list[Event]) -> bool:
        """Insert what the store lacks; False (and a retry time) when the store failed."""
        started = time.perf_counter()
        try:
            if self.store_max is None:
                self.store_max = self.store.max_seq()
            fresh = [e for e in events if e.seq > self.store_max]
            for run in split_by_day(fresh):
                if not self.may_write():
                    self.store_max = None
                    return False  # nothing more from this writer: what it holds stays spooled
                self.store.insert(run)
                self.store_max = run[-1].seq
                self.written += len(run)
        except StoreError as exc:
            self.store_max = None  # an insert may have landed: ask before the next one
            self._failures += 1
            delay_ms = reconnect_delay_ms(self._failures - 1, self.retry_min_ms, self.retry_max_ms, 0.5)
            self._retry_at = time.monotonic() + delay_ms / 1000.0
            if self.ok:
                log.error("store write failed, spooling until it recovers: %s", exc)
            self.ok = False
            self.last_error = str(exc)
            return False
        if not self.ok:
            log.info("store recovered after %d failed attempts", self._failures)
        self.ok = True
        self.last_error = None
        self._failures = 0
        if fresh:
            self.on_written(len(fresh), time.perf_counter() - started)
        return True


def spawn_writer(writer: StoreWriter) -> gevent.Greenlet:
    return gevent.spawn(writer.run)
