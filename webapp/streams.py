"""What a new /ws or /sse client is sent first: recent events, or everything after its `since`.

`open_stream` reads the cache without yielding, so the caller can register the
client with the hub in the same instant: nothing published in between is lost
or sent twice. When the resume reaches further back than the cache, the older
part comes from the store afterwards (`fill_from_store`, which yields); the
hub holds the client's live events until the snapshot has gone out.
"""

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

import gevent

from handlers.events import Event
from handlers.params import StreamParams
from handlers.resume import is_foreign, last_hole_end, plan_resume
from handlers.topics import Matcher
from webapp.store.base import StoreError, topic_condition
from webapp.threads import call_in_thread

log = logging.getLogger(__name__)

STORED_WAIT_MIN_S = 2.0  # a resume waits at least this long (or 4 x STORE_BATCH_MS) for the writer's batch


@dataclass(frozen=True, slots=True)
class Opening:
    epoch: str
    last_seq: int
    recovered: bool
    missing: tuple[int, int] | None
    events: list[Event]
    from_store: tuple[int, int] | None = None  # inclusive seq range still to fetch from the store
    foreign: bool = False  # the client's since was of another seq space: never `recovered`, whatever is found


def open_stream(runtime, params: StreamParams, matcher: Matcher) -> Opening:
    """The cache's part of the opening. Never yields."""
    now = runtime.now_ms()
    cache = runtime.cache
    last_seq = runtime.last_seq
    if params.since is None:
        if params.snapshot_latest:
            events = cache.latest(now, matcher, params.snapshot)
        else:
            events = cache.recent(params.snapshot, now, matcher) if params.snapshot else []
        return Opening(runtime.stream_epoch, last_seq, True, None, events)
    plan = plan_resume(params.since, params.epoch, runtime.stream_epoch, last_seq, cache.oldest_seq(now))
    events = cache.events_after(plan.after_seq, now, matcher)
    foreign = is_foreign(params.since, params.epoch, runtime.stream_epoch, last_seq)
    if plan.missing is not None and runtime.store is not None and runtime.ready.is_set():
        # a foreign since gets every event still held from seq 1 on: the store's too (before, a foreign resume
        # was told the store's events were missing, an outside audit)
        return Opening(runtime.stream_epoch, last_seq, plan.recovered, plan.missing, events, plan.missing, foreign)
    opening = Opening(runtime.stream_epoch, last_seq, plan.recovered, plan.missing, events, foreign=foreign)
    return opening if foreign else with_crash_gap(runtime, with_store_holes(runtime, opening, params.since, now),
                                                  params.since)


def with_store_holes(runtime, opening: Opening, since: int, now_ms: int) -> Opening:
    """Seqs the store never got (dead-lettered, dropped while the spool was full) and the cache no longer
    holds (it was warmed from the store after a restart) are missing, as on a resume from the store."""
    if opening.missing is not None:
        return opening
    gone = [(lo, hi) for lo, hi in runtime.store_holes() if runtime.cache.get(lo, now_ms) is None]
    end = last_hole_end(gone, since + 1, opening.last_seq)
    if end is None:
        return opening
    return replace(opening, recovered=False, missing=(since + 1, end),
                   events=[e for e in opening.events if e.seq > end])


def with_crash_gap(runtime, opening: Opening, since: int) -> Opening:
    """Seqs numbered before a crash and never persisted are missing for whoever resumes before them."""
    lost = runtime.lost_range
    if lost is None or opening.missing is not None or since >= lost[1]:
        return opening
    return replace(opening, recovered=False, missing=(max(since + 1, lost[0]), lost[1]))


def fill_from_store(runtime, opening: Opening, matcher: Matcher, gone: Callable[[], bool] = lambda: False,
                    limit: int | None = None, spool: bool = True) -> Opening:
    """Fetch the part of a resume that the cache no longer holds (yields for the store).

    At most RESUME_CONCURRENCY resumes of a worker read the store at once, each RESUME_PAGE_EVENTS at a
    time, newest first: rows become events on the worker's loop, so one resume of 100,000 events held it
    ~0.65 s, and ten at once ~7 s (an outside audit). A client that is `gone()` (closed, or its peer hung
    up) before its turn or between pages stops reading: what is left is reported missing to no one."""
    if opening.from_store is None:
        return opening
    first, last = opening.from_store
    limit = runtime.settings.resume_max_events if limit is None else limit
    if not stored_through(runtime, last, gone):
        # the store is down or behind: what the store has not taken is in this worker's spool (or writer)
        spooled = from_spool(runtime, first, last, matcher, limit, gone) if spool else None
        if spooled is None:
            log.warning("resume: the store has not taken seqs up to %d yet (STORE_BATCH_MS, or the store is down): "
                        "reporting %d..%d missing", last, first, last)
            return replace(opening, from_store=None)
        events, held_from = spooled
        if held_from <= first or len(events) >= limit:
            return served(runtime, opening, first, last, events, held_from, limit)
        # older than the spool's oldest: the store's (it may have taken those), or missing
        rest = replace(opening, events=events + opening.events, missing=(first, held_from - 1),
                       from_store=(first, held_from - 1))
        return fill_from_store(runtime, rest, matcher, gone, limit - len(events), spool=False)
    if writes_store(runtime) and runtime.writer.stalled():
        # the writer's call has hung for STALLED_S: a read would wait the driver's I/O time-out (30 s) on the
        # same store, holding a RESUME_CONCURRENCY slot (an outside audit: snapshots after 35 s)
        log.warning("resume: the store does not answer (a call has waited %.0f s): reporting %d..%d missing",
                    runtime.writer.store_stalled_s(), first, last)
        return replace(opening, from_store=None)
    page = runtime.settings.resume_page_events
    newest_first: list[Event] = []
    with runtime.resume_gate:
        try:
            top = last
            while len(newest_first) < limit and top >= first:
                if gone():
                    return replace(opening, from_store=None)
                want = min(page, limit - len(newest_first))
                params = {"first": first, "last": top, "limit": want}
                condition = topic_condition(matcher.patterns, params)
                rows = runtime.store.select_events(
                    f"WHERE seq >= %(first)s AND seq <= %(last)s AND {condition} ORDER BY seq DESC LIMIT %(limit)s",
                    params)
                newest_first.extend(rows)
                if len(rows) < want:
                    break
                top = rows[-1].seq - 1
            stored_min = runtime.store.min_seq()
        except StoreError as exc:
            log.warning("resume from the store failed (%s): reporting %d..%d missing", exc, first, last)
            return replace(opening, from_store=None)
    return served(runtime, opening, first, last, newest_first[::-1], stored_min or last + 1, limit)


def served(runtime, opening: Opening, first: int, last: int, older: list[Event], held_from: int, limit: int) -> Opening:
    """The opening with `older` (ascending, at most `limit`, read from a source that holds every seq from
    `held_from` up to `last`) before the cache's events, and what it cannot vouch for reported missing: below
    `held_from`, cut off by the limit, or up to the last range the store never got (dropped while the spool
    was full and the store down)."""
    lowest_served = max(first, held_from)
    if len(older) >= limit:
        lowest_served = max(lowest_served, older[0].seq)
    hole_end = last_hole_end(runtime.store_holes(), lowest_served, last)
    if hole_end is not None:
        lowest_served = hole_end + 1
        older = [e for e in older if e.seq > hole_end]
    missing = (first, lowest_served - 1) if lowest_served > first else None
    filled = replace(opening, events=older + opening.events, missing=missing,
                     recovered=missing is None and not opening.foreign, from_store=None)
    return with_crash_gap(runtime, filled, first - 1)


def from_spool(runtime, first: int, last: int, matcher: Matcher, limit: int,
               gone: Callable[[], bool] = lambda: False) -> tuple[list[Event], int] | None:
    """Seqs first..last as the worker that writes the store holds them before the store has them: its spool's
    rows and its writer's memory. The newest `limit` matching events (ascending) and the lowest seq from which
    they hold every seq up to `last` (the store's holes count as held: they are reported as missing later);
    None when this worker writes no store, or they do not reach `last`, or a row went meanwhile (in the store
    now). Before, a resume during a store outage reported `missing` for events that sat in the spool."""
    if not writes_store(runtime):
        return None
    writer = runtime.writer
    memory = writer.unspooled(first, last)  # read before the rows: what leaves it goes to the spool
    try:
        rows = call_in_thread(writer.spool.rows_between, first, last)
    except OSError as exc:
        log.warning("resume: could not read the spool (%s)", exc)
        return None
    spans = [(lo, hi) for _, lo, hi in rows] + [(e.seq, e.seq) for e in memory] + list(runtime.store_holes())
    held_from = held_down_to(spans, last)
    if held_from is None:
        return None
    first = max(first, held_from)  # below it a seq is missing: nothing older is served
    rows = [row for row in rows if row[2] >= first]
    by_seq = {e.seq: e for e in memory if e.seq >= first and matcher(e.topic)}
    with runtime.resume_gate:  # read like the store: at most RESUME_CONCURRENCY at once, a row at a time
        for row_id, _lo, hi in rows:
            if len(by_seq) >= limit and min(by_seq) > hi:
                break  # the newest `limit` are in hand: older rows cannot change them
            if gone():
                return None
            try:
                events = call_in_thread(writer.spool.row, row_id)
            except OSError as exc:
                log.warning("resume: could not read the spool (%s)", exc)
                return None
            if events is None:
                return None  # drained into the store meanwhile: the store has it
            by_seq.update((e.seq, e) for e in events if first <= e.seq <= last and matcher(e.topic))
    newest = sorted(by_seq)[-limit:] if limit > 0 else []
    return [by_seq[seq] for seq in newest], held_from


def writes_store(runtime) -> bool:
    """Does this worker write the store (alone, or as a cluster's leader)? Its writer then knows the store."""
    return runtime.writer is not None and (not runtime.clustered or runtime.feeding_writer)


def held_down_to(spans: list[tuple[int, int]], last: int) -> int | None:
    """The lowest seq from which the inclusive `spans` cover every seq up to `last`; None when `last` is not."""
    low = None
    for lo, hi in sorted(spans, key=lambda span: span[1], reverse=True):
        if low is None:
            if hi < last:
                return None
            if lo <= last:
                low = lo
            continue
        if hi >= low - 1:
            low = min(low, lo)
    return low


def stored_through(runtime, seq: int, gone: Callable[[], bool]) -> bool:
    """Wait until the store holds every event up to `seq` (a resume reads the store below the cache's
    oldest event, and the newest of those may still wait for the writer's next batch): True once it
    does, False if not within the wait (the store down: they wait in the spool) or the client is gone.
    An outside check: with 2,500 events/s and a cache of 200, a resume got seqs to 40,219 from the store,
    40,230 on from the cache, and never the 10 between, still in the writer's batch.

    The worker that writes the store (one alone, a cluster's leader) asks its writer; a cluster's follower
    asks the store for its newest seq (the leader's writer inserts in seq order; what it gave up on is a
    hole, reported with the store's holes)."""
    writer = runtime.writer
    local = writes_store(runtime)
    if local:
        def stored() -> bool:
            return writer.stored_through(seq)
        poll_s = 0.02
    else:
        def stored() -> bool:
            return (runtime.store.max_seq() or 0) >= seq
        poll_s = 0.05
    try:
        if stored():
            return True
        if local:
            writer.hurry()
        deadline = time.monotonic() + max(STORED_WAIT_MIN_S, 4 * runtime.settings.store_batch_ms / 1000)
        while True:
            if gone() or time.monotonic() >= deadline:
                return False
            gevent.sleep(poll_s)
            if stored():
                return True
    except StoreError as exc:
        log.warning("resume: could not ask the store for its newest seq (%s)", exc)
        return False


class SnapshotLedger:
    """Snapshot bytes this worker still holds queued for its clients, and the wait of a resume while they
    are past SNAPSHOT_QUEUE_MAX_BYTES.

    A snapshot is not counted in its client's own bound (a resume may be larger than the bound on its
    own), so one resume of RESUME_MAX_EVENTS held ~30 MB until its client read it, and a thousand clients
    resuming after a deploy would have held tens of GB. Only clients whose snapshot did not go straight
    to the kernel are noted; they are dropped from the ledger once it has drained or they closed."""

    def __init__(self, max_bytes: int, wait_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self.clock = clock
        self._clients: set = set()
        self._pruned_at = 0  # the ledger's size after its last pruning
        self.waits = self.refused = 0

    def note(self, client) -> None:
        """`client`'s snapshot is written: held while part of it is still queued."""
        if client.snapshot_left() > 0:
            self._clients.add(client)
            if len(self._clients) > 2 * self._pruned_at + 64:
                self.queued()  # prune as it grows, not only when a resume asks

    def queued(self) -> int:
        total = 0
        for client in list(self._clients):
            left = 0 if client.closed else client.snapshot_left()
            if left <= 0:
                self._clients.discard(client)
            total += max(0, left)
        self._pruned_at = len(self._clients)
        return total

    def wait_for_room(self, gone: Callable[[], bool], before_wait: Callable[[], None] = lambda: None) -> bool:
        """Under the budget now or within wait_s (True); False when it is still past it, or the client
        went away meanwhile. Polls every 50 ms: only resumes with `since` wait here. `before_wait()` is called
        once before it waits."""
        if self.queued() < self.max_bytes:
            return True
        before_wait()
        self.waits += 1
        deadline = self.clock() + self.wait_s
        while self.clock() < deadline:
            gevent.sleep(0.05)
            if gone():
                return False
            if self.queued() < self.max_bytes:
                return True
        self.refused += 1
        return False
