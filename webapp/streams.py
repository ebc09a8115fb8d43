"""What a new /ws or /sse client is sent first: recent events, or everything after its `since`.

`open_stream` reads the cache without yielding, so the caller can register the
client with the hub in the same instant: nothing published in between is lost
or sent twice. When the resume reaches further back than the cache, the older
part comes from the store afterwards (`fill_from_store`, which yields); the
hub holds the client's live events until the snapshot has gone out.
"""

import logging
from dataclasses import dataclass, replace
from typing import Callable

from handlers.events import Event
from handlers.params import StreamParams
from handlers.resume import last_hole_end, plan_resume
from handlers.topics import Matcher
from webapp.store.base import StoreError, topic_condition

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Opening:
    epoch: str
    last_seq: int
    recovered: bool
    missing: tuple[int, int] | None
    events: list[Event]
    from_store: tuple[int, int] | None = None  # inclusive seq range still to fetch from the store


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
    foreign = plan.after_seq != params.since
    if plan.missing is not None and not foreign and runtime.store is not None and runtime.ready.is_set():
        return Opening(runtime.stream_epoch, last_seq, plan.recovered, plan.missing, events, plan.missing)
    opening = Opening(runtime.stream_epoch, last_seq, plan.recovered, plan.missing, events)
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


def fill_from_store(runtime, opening: Opening, matcher: Matcher, gone: Callable[[], bool] = lambda: False) -> Opening:
    """Fetch the part of a resume that the cache no longer holds (yields for the store).

    At most RESUME_CONCURRENCY resumes of a worker read the store at once, each RESUME_PAGE_EVENTS at a
    time, newest first: rows become events on the worker's loop, so one resume of 100,000 events held it
    ~0.65 s, and ten at once ~7 s (an outside audit). A client that is `gone()` (closed, or its peer hung
    up) before its turn or between pages stops reading: what is left is reported missing to no one."""
    if opening.from_store is None:
        return opening
    first, last = opening.from_store
    limit, page = runtime.settings.resume_max_events, runtime.settings.resume_page_events
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
    older = newest_first[::-1]
    # What the store cannot vouch for: below its first row, cut off by the limit, or up to
    # the last range it never got (dropped while the spool was full and the store down).
    lowest_served = max(first, stored_min) if stored_min else last + 1
    if len(older) >= limit:
        lowest_served = max(lowest_served, older[0].seq)
    hole_end = last_hole_end(runtime.store_holes(), lowest_served, last)
    if hole_end is not None:
        lowest_served = hole_end + 1
        older = [e for e in older if e.seq > hole_end]
    missing = (first, lowest_served - 1) if lowest_served > first else None
    filled = replace(opening, events=older + opening.events, missing=missing,
                     recovered=missing is None, from_store=None)
    return with_crash_gap(runtime, filled, first - 1)
