"""The background store writer: batches by count and time, spools before inserting, replays in order, exactly once.

Exactly once: this greenlet is the only writer. It knows the store's highest
seq after every successful insert; after any failure it asks the store again
before inserting, and only rows above that maximum are sent. A batch never
spans two daily partitions, so each INSERT is one atomic part and "the maximum
is in" means "everything up to it is in".

A poison batch — one the store refuses (or the driver cannot encode) on
every attempt, as opposed to a store that is unreachable — is tried
`poison_attempts` times, then written to DATA_DIR/dead-letter with its seqs,
counted, and skipped: the writer moves on, and a restart does not replay it
into a crash loop. Its seq range is reported `missing` to resuming clients.

One cycle at a time: the writer greenlet and the shutdown flush both run
`cycle()`, under one lock, so two drains never share the store's connection.
A cycle that dies half-way (the task is restarted by webapp/tasks.py) puts its
batch back and forgets the store's maximum, so nothing is lost or doubled.
"""

import logging
import os
import time
from typing import Callable

import gevent
import orjson
from gevent.event import Event as Signal
from gevent.lock import BoundedSemaphore

from handlers.backoff import reconnect_delay_ms
from handlers.events import Event
from webapp.store.base import Store, StoreError, StoreUnavailable
from webapp.store.spool import Spool, SpoolFull

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
STALLED_S = 5.0  # a store call (an insert, its max(seq)) waiting this long makes the store failing
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
                 poison_attempts: int = 5, dead_letter_dir: str | None = None,
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
        self.poison_attempts = poison_attempts
        self.dead_letter_dir = dead_letter_dir or os.path.join(os.path.dirname(spool.directory), "dead-letter")
        self.dead_letter_events = 0  # events the store refused for good (this process)
        self.dead_letter_batches = 0
        self.dead_letter_last: tuple[int, int] | None = None
        self._refusals = 0  # consecutive refusals of the batch being inserted
        self._in_hand: list[Event] | None = None  # taken from pending, not yet in the spool
        self._unconfirmed = False  # a spooled batch is being inserted
        self._wake = Signal()
        self._cycling = BoundedSemaphore(1)
        # every spool call holds it: a batch spooled aside (spool_aside) while a cycle waits on the store
        # must not meet the cycle's own spool calls on the spool's one connection
        self._spooling = BoundedSemaphore(1)
        self._store_call_since: float | None = None  # monotonic start of the store call in progress
        self._kept_through = 0  # spool rows up to this id are in the store but could not be deleted yet

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

    def stored_through(self, seq: int) -> bool:
        """Is every event this writer was given up to `seq` in the store (or given up on: a dead letter or
        a drop, which the store's holes report)? Not while one waits in `pending`, in hand, or in the
        spool behind the store's newest row. Events come in ascending seq, and go in in that order."""
        if self.pending and self.pending[0].seq <= seq:
            return False
        if self._in_hand and self._in_hand[0].seq <= seq:
            return False
        return not ((self._backlog or self._unconfirmed) and (self.store_max is None or self.store_max < seq))

    def unspooled(self, first: int, last: int) -> list[Event]:
        """Events in [first, last] this writer holds in memory, not yet (surely) in its spool: in hand or pending."""
        return [e for e in (self._in_hand or []) + self.pending if first <= e.seq <= last]

    def hurry(self) -> None:
        """Write what is pending now rather than at the end of the batch interval (a resume waits for it)."""
        if self.pending:
            self._wake.set()

    # -- the loop --------------------------------------------------------------------------

    def start_from(self, store_max: int | None, spooled: bool) -> None:
        self.store_max = store_max
        self._backlog = spooled

    def run(self) -> None:
        while True:
            self._wake.wait(self.batch_s)
            self._wake.clear()
            cycle = gevent.spawn(self.cycle)
            try:
                # A store that hangs rather than refuses (a stopped server: the driver waits out its 30 s
                # I/O time-out) held the cycle, and every batch after it waited in memory: a SIGTERM or a
                # SIGKILL then lost them all (an outside audit: 3,735-5,745 events). While the cycle waits,
                # each batch interval's events go to the spool instead, behind the one being inserted.
                while not cycle.ready():
                    cycle.join(self.batch_s)
                    if not cycle.ready() and self.pending:
                        self.spool_aside()
                cycle.get()  # a crash of the cycle is this task's crash (webapp/tasks.py restarts it)
            finally:
                cycle.kill()  # the task killed or crashed: the cycle's own handler puts its batch back

    def spool_aside(self) -> bool:
        """While a cycle waits on the store: what is pending goes to the spool (True), to be written in order
        after what the spool holds. It stays pending when the spool cannot take it."""
        batch = self.pending[:]  # a copy: the ingest goes on extending `pending` while the thread reads this
        if not batch:
            return True
        with self._spooling:
            backlog, self._backlog = self._backlog, True  # first: a cycle's clear() must not take this batch
            try:
                self.in_thread(self.spool.append, batch)
            except (SpoolFull, OSError) as exc:
                self._backlog = backlog
                log.error("could not spool %d events while the store does not answer: %s", len(batch), exc)
                return False
        del self.pending[:len(batch)]
        return True

    def store_stalled_s(self) -> float:
        """How long the store call in progress has been waiting for the store (0 when none is)."""
        since = self._store_call_since
        return 0.0 if since is None else time.monotonic() - since

    def stalled(self) -> bool:
        """Has the store call in progress waited STALLED_S or more (a store that hangs rather than refuses)?"""
        return self.store_stalled_s() >= STALLED_S

    def cycle(self, timeout_s: float | None = None) -> bool:
        """One batch and, when due, a drain of the spool. False when another cycle held the lock past `timeout_s`."""
        if not self._cycling.acquire(timeout=timeout_s):
            return False
        try:
            if not self.may_write():
                return True  # not now: what is pending waits (a lost lease discards it, see discard_pending)
            batch, self.pending = self.pending, []
            if batch:
                self._in_hand = batch
                self._take(batch)
                self._in_hand = None
            if self._backlog and time.monotonic() >= self._retry_at:
                self._drain()
        except OSError as exc:
            # the spool's disk failed outside an append (reading it back, deleting
            # rows): say so and try again next cycle; the writer must not die
            log.error("spool I/O failed: %s", exc)
            self._retry_at = time.monotonic() + self.retry_max_ms / 1000.0
        except BaseException:
            # killed or crashed mid-cycle: what was taken and not yet spooled goes back first,
            # and an insert may have landed, so the store's maximum is asked again
            if self._in_hand is not None:
                self.pending[:0] = self._in_hand
                self._in_hand = None
            if self._unconfirmed:  # spooled, insert unknown: the drain writes what the store lacks
                self._backlog = True
                self._unconfirmed = False
            self.store_max = None
            raise
        finally:
            self._cycling.release()
        return True

    def flush(self, timeout_s: float) -> bool:
        """Write everything pending now (SIGTERM); True when nothing is left unspooled."""
        deadline = time.monotonic() + timeout_s
        self._retry_at = 0.0
        while not self.may_write() and time.monotonic() < deadline:
            gevent.sleep(0.05)  # the fence may open again (a lease renewed); a lost one times out
        if not self.cycle(timeout_s):
            # a cycle still waits on the store: what is pending is kept in the spool for the next start
            self.spool_aside()
            return not self.pending
        while self._backlog and time.monotonic() < deadline and self.ok and self.may_write():
            self.cycle(max(0.0, deadline - time.monotonic()))
        return not self.pending

    # -- one batch ------------------------------------------------------------------------

    def _take(self, batch: list[Event]) -> None:
        try:
            self._spool_call(self.spool.append, batch)
            self._in_hand = None  # durable in the spool from here on
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
        self._unconfirmed = True  # in the spool, not yet known to be in the store
        inserted = self._insert(batch)
        self._unconfirmed = False
        with self._spooling:
            if inserted and not self._backlog:  # (batches spooled aside meanwhile stay for the drain)
                self.in_thread(self.spool.clear)
            else:
                self._backlog = True

    def _drain(self) -> None:
        """Write the spool back in order, a bounded chunk at a time, deleting each chunk once it is in.

        A chunk in the store whose rows cannot be deleted (a full disk: SQLite needs room to delete) is
        kept and read past (`_kept_through`), and deleted once it can be: a drain that failed on it every
        time left the backlog for good, and every batch after it was dropped with the store up (an outside
        audit: 22,130 events in 20 s on a 4 MiB disk)."""
        if self._kept_through:
            try:
                self._spool_call(self.spool.remove_through, self._kept_through)
                self._kept_through = 0
            except OSError:
                pass  # still no room: still kept
        while records := self._spool_call(self.spool.oldest, self._kept_through):
            for record in records:
                if not self._insert(record.events):
                    return  # what was inserted of this chunk stays spooled: the next drain skips it (store_max)
            try:
                self._spool_call(self.spool.remove_through, records[-1].id)
            except OSError as exc:
                if not self._kept_through:
                    log.error("spool: rows already in the store could not be deleted (%s); kept until they can "
                              "be, and read past", exc)
                self._kept_through = records[-1].id
        with self._spooling:
            if self.in_thread(self.spool.has_after, self._kept_through):
                return  # spooled aside while the last chunk went in: the next drain writes it
            self._backlog = False
        log.info("spool written back: the store has every event")

    def _spool_call(self, fn, *args):
        with self._spooling:
            return self.in_thread(fn, *args)

    def _insert(self, events: list[Event]) -> bool:
        """Insert what the store lacks; False (and a retry time) when the store failed.

        True also when the batch was dead-lettered: the writer is done with it."""
        started = time.perf_counter()
        fresh: list[Event] = []
        self._store_call_since = time.monotonic()
        try:
            if self.store_max is None:
                self.store_max = self.store.max_seq()
            fresh = [e for e in events if e.seq > self.store_max]
            for run in split_by_day(fresh):
                if not self.may_write():
                    self.store_max = None
                    return False  # nothing more from this writer: what it holds stays spooled
                self._store_call_since = time.monotonic()
                self.store.insert(run)
                self.store_max = run[-1].seq
                self.written += len(run)
        except StoreUnavailable as exc:
            self._refusals = 0
            return self._failed(exc)
        except StoreError as exc:
            return self._refused(fresh, exc)
        except Exception as exc:  # noqa: BLE001  (a driver that cannot encode this batch: about the batch, not the store)
            return self._refused(fresh, exc)
        finally:
            self._store_call_since = None
        self._refusals = 0
        if not self.ok:
            log.info("store recovered after %d failed attempts", self._failures)
        self.ok = True
        self.last_error = None
        self._failures = 0
        if fresh:
            self.on_written(len(fresh), time.perf_counter() - started)
        return True

    def _refused(self, fresh: list[Event], exc: Exception) -> bool:
        """The store (or the driver) refused this batch: retried, then dead-lettered."""
        self._refusals += 1
        if not fresh or self._refusals < self.poison_attempts:
            return self._failed(exc)
        self.store_max = None
        remaining = [e for e in fresh if e.seq > (self._ask_max() or 0)]
        self._refusals = 0
        if not remaining:
            return True
        self._dead_letter(remaining, exc)
        return True

    def _ask_max(self) -> int | None:
        try:
            self.store_max = self.store.max_seq()
        except StoreError:
            return None
        return self.store_max

    def _dead_letter(self, events: list[Event], exc: Exception) -> None:
        first, last = events[0].seq, events[-1].seq
        path = os.path.join(self.dead_letter_dir, f"{first:020d}-{last:020d}.jsonl")
        reason = f"{type(exc).__name__}: {exc}"
        try:
            self.in_thread(_write_dead_letter, path, events, reason)
        except OSError as write_exc:
            log.error("could not write dead letter %s: %s", path, write_exc)
        self.dead_letter_events += len(events)
        self.dead_letter_batches += 1
        self.dead_letter_last = (first, last)
        log.error("the store refused seqs %d..%d %d times (%s): written to %s and skipped",
                  first, last, self.poison_attempts, reason, path)
        self.on_dropped(first, last)
        if self.store_max is None or self.store_max < last:
            # the next batch goes on from here: nothing below `last` will ever be inserted now
            self.store_max = max(self.store_max or 0, last)

    def _failed(self, exc: Exception) -> bool:
        self.store_max = None  # an insert may have landed: ask before the next one
        self._failures += 1
        delay_ms = reconnect_delay_ms(self._failures - 1, self.retry_min_ms, self.retry_max_ms, 0.5)
        self._retry_at = time.monotonic() + delay_ms / 1000.0
        if self.ok:
            log.error("store write failed, spooling until it recovers: %s", exc)
        self.ok = False
        self.last_error = str(exc)
        return False


def _write_dead_letter(path: str, events: list[Event], reason: str) -> None:
    """One file per refused batch: a header line with the seqs and why, then the events as stored."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = orjson.dumps({"first_seq": events[0].seq, "last_seq": events[-1].seq, "events": len(events),
                           "reason": reason, "at": time.time()})
    with open(path, "wb") as f:
        f.write(header + b"\n" + b"\n".join(e.json for e in events) + b"\n")
        f.flush()
        os.fsync(f.fileno())

