"""Where a starting worker continues: the shell that gathers the store's maximum and epoch, the spool
and the local reservation, asks handlers/recovery.py for the plan, applies it and warms the cache."""

import logging

import gevent

from handlers.backoff import reconnect_delay_ms
from handlers.events import Event
from handlers.recovery import plan_recovery
from webapp.store.base import StoreError
from webapp.threads import call_in_thread

log = logging.getLogger(__name__)


def recover(rt, floor_seq: int, floor_epoch: str | None) -> tuple[int | None, str | None, int]:
    """Seq base, epoch and a warm cache from the store, the spool and the local state.

    Alone, a seq reservation in DATA_DIR keeps seqs from being reused after a
    crash. In a cluster, Redis's counter is the seq authority (leader.py seeds
    it from what this returns: the store's maximum and its epoch, None when
    the store could not be asked, and the spool's maximum) and the writer is
    fed from the stream.
    """
    records = call_in_thread(rt.spool.load, rt.settings.cache_max_items)  # the newest: seq base, warm cache
    spooled = [e for r in records for e in r.events]
    if not rt.clustered:
        call_in_thread(rt.seq_state.load)
    local_epoch = None if rt.clustered else rt.seq_state.epoch
    attempt = 0
    while True:
        try:
            rt.store.ensure_schema()
            store_max = rt.store.max_seq()
            stored_epoch = rt.store.get_meta("epoch") if store_max else None
            break
        except StoreError as exc:
            rt.boot_error = str(exc)
            if local_epoch is not None or floor_epoch is not None:
                # local state or the stream is enough to continue without reusing a
                # seq; the writer spools until the store answers
                log.error("store unavailable at start (%s): continuing without it", exc)
                store_max, stored_epoch = None, None
                break
            delay_ms = reconnect_delay_ms(attempt, 200, rt.settings.store_retry_max_ms, 0.5)
            log.error("store unavailable at start (%s): retrying in %.1f s", exc, delay_ms / 1000)
            attempt += 1
            gevent.sleep(delay_ms / 1000)
    rt.boot_error = None
    spool_max = spooled[-1].seq if spooled else 0
    plan = plan_recovery(store_max=store_max, spool_max=spool_max,
                         reserved=0 if rt.clustered else rt.seq_state.reserved, floor_seq=floor_seq,
                         floor_epoch=floor_epoch, stored_epoch=stored_epoch, local_epoch=local_epoch,
                         current_epoch=rt.epoch, clustered=rt.clustered, block=rt.settings.seq_reserve_block)
    last_seq = plan.last_seq
    rt.epoch = plan.epoch or rt.new_epoch()  # nothing to continue: a fresh seq space
    rt.ingest.last_seq = last_seq
    if plan.lost is not None:
        rt.lost_range = plan.lost
        log.warning("seqs %d..%d were numbered before a crash and are lost", *rt.lost_range)
    if plan.reserve_to is not None:
        call_in_thread(rt.seq_state.save, rt.epoch, plan.reserve_to)
    if plan.lost is not None and not rt.clustered:
        # kept with the store's other holes: held in memory only, the range was reported missing until the
        # next restart, and a clean restart after it told a resume across it `recovered: true` while
        # skipping it (an outside audit: 1361..10000 skipped, the 20 delivered before the crash with them)
        try:
            call_in_thread(rt.seq_state.add_hole, rt.epoch, *plan.lost)
        except OSError as exc:
            log.error("could not save the lost range %d..%d to %s: %s", *plan.lost, rt.seq_state.path, exc)
    if not rt.clustered and store_max is not None and stored_epoch != rt.epoch:
        try:
            rt.store.set_meta("epoch", rt.epoch)
        except StoreError as exc:
            log.error("could not record the epoch in the store: %s", exc)
    if not rt.clustered:
        warm(rt, store_max, spooled)
        rt.bus.last_seq = max(rt.bus.last_seq, last_seq)
        rt.bus.epoch = rt.epoch
    rt.writer.start_from(store_max, spooled=bool(records))
    return store_max, stored_epoch, spool_max


def warm(rt, store_max: int | None, spooled: list[Event]) -> None:
    now = rt.now_ms()
    events: list[Event] = []
    if store_max:
        try:
            events = rt.store.select_events(
                "WHERE ts >= %(min_ts)s AND date >= toDate(intDiv(%(min_ts)s, 1000)) ORDER BY seq DESC LIMIT %(limit)s",
                {"min_ts": now - rt.settings.cache_ttl_seconds * 1000, "limit": rt.settings.cache_max_items})[::-1]
        except StoreError as exc:
            log.error("could not warm the cache from the store: %s", exc)
    events += [e for e in spooled if not events or e.seq > events[-1].seq]
    rt.cache.add(events, now)
    if events:
        log.info("cache warmed with %d events (seq %d..%d)", len(rt.cache), events[0].seq, events[-1].seq)
