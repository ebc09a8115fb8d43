"""Leadership in a cluster (REDIS_URL): stand for the lease, take over, lead, step down — driving handlers/roles.py.

One authority: the lease's holder is the only worker whose events get seqs
(the append script numbers them, fenced by the lease's token) and the only
one whose store writer may insert (`may_write`, checked before every insert).
The writer is fed from the stream, not from ingest: what reached the stream
is what gets stored, by whoever holds the lease; where the stream lost it
(Redis restarted empty), a new leader writes what it read from its cache.
The lease is renewed until the graceful flush is done and released only
after it; a worker that dies never releases it (it lapses).
"""

import heapq
import logging
import time

import gevent

from handlers import roles
from handlers.backoff import reconnect_delay_ms
from handlers.events import Event
from webapp import clientgate
from webapp.bus.failures import FAILURES
from webapp.bus.lease import LostLease
from webapp.bus.receipt import NoLeader
from webapp.bus.redis import RedisBus
from webapp.recovery import recover
from webapp.store.base import StoreError
from webapp.tasks import EXIT

log = logging.getLogger(__name__)

ASIDE_MAX_AGE_LEASES = 3
"""Events set aside when leading stopped wait at most this many lease periods for this worker's next term."""

# An insert is started only while the lease stays ours for longer than this, and the ClickHouse
# server drops an insert whose client stalls longer than this mid-way (receive_timeout): a leader
# paused inside an insert cannot land it after its lease has lapsed.
INSERT_TIMEOUT_S = 1
# after seeding a seq counter Redis had lost (it restarted empty), how long this term's first append waits for
# the other workers' readers to report how far they had read (bus RedisBus.hold_for_reports): each reports at
# once when it reaches Redis again, and retries every 0.5 s while it cannot. Events meanwhile wait in the
# outbox (the upstream is read all along)
REPORTS_WAIT_S = 1.0
DRAIN_WAIT_S = 2.0  # on shutdown: how long the leader waits for its numbered events to come back from the stream


class Leadership:
    """The thin shell around the role table: every role change goes through `apply`."""

    def __init__(self, runtime, bus: RedisBus):
        self.rt = runtime
        self.bus = bus
        self.holder_cached: str | None = None  # who holds the lease, as last read
        self.last_other_holder: str | None = None  # the last other worker seen holding it
        bus.on_fenced = lambda reason: runtime.tasks.spawn("stand_down", self.stop_leading, reason)

    @property
    def role(self) -> str:
        return self.rt.role

    def apply(self, event: str) -> str:
        self.rt.role = role = roles.next_role(self.rt.role, event)
        settings = self.rt.settings
        clientgate.set_open(roles.takes_clients(role, settings.leader_accepts, settings.web_concurrency))
        return role

    def may_write(self) -> bool:
        """The store writer's fence (checked right before each insert)."""
        lease_left_s = self.bus.lease.held_until - time.monotonic()
        return roles.may_write_store(self.rt.role, lease_left_s > INSERT_TIMEOUT_S)

    # -- joining --------------------------------------------------------------------

    def join(self) -> None:
        """Warm the cache from the stream, read it from there on, and stand for leader."""
        rt, bus = self.rt, self.bus
        if rt.store is None and not rt.settings.clickhouse_url:
            log.warning("persistence is off: the embedded chDB store cannot be shared by several workers; "
                        "set CLICKHOUSE_URL to a ClickHouse server to persist a cluster's events")
        attempt = 0
        while True:
            try:
                events, epoch, last_id = bus.tail(rt.settings.cache_max_items)
                break
            except FAILURES as exc:
                bus._failed(exc)
                delay_ms = reconnect_delay_ms(attempt, 200, 5000, 0.5)
                attempt += 1
                gevent.sleep(delay_ms / 1000)
        bus.last_id = last_id
        bus.received(events, epoch)
        bus.report()  # the leader waits for this worker's reader from here on (bus/readers.py)
        if epoch:
            rt.epoch = epoch
        if self.role == roles.STOPPED:
            return  # shut down while joining
        self.apply(roles.JOINED)
        rt.ready.set()
        rt._greenlets.append(rt.tasks.spawn("reader", bus.run_reader))
        rt._greenlets.append(rt.tasks.spawn("lease", self.stand))
        log.info("joined the cluster as a follower (epoch %s, last seq %d)", rt.epoch, bus.last_seq)

    def stand(self) -> None:
        """The lease loop: acquire as a follower, renew while holding; ends once stopped."""
        lease = self.bus.lease
        period_s = self.rt.settings.leader_lease_ms / 3000.0
        while self.role != roles.STOPPED:
            try:
                if roles.holds_lease(self.role):
                    if not lease.renew():
                        self.stop_leading("the lease was taken over")
                elif not self.rt.shutting_down and lease.acquire():
                    self.apply(roles.ELECTED)
                    # the worker that held it before lost it (died, cut off, paused): its reader is not waited for
                    self.rt._leading = [self.rt.tasks.spawn("take_over", self.take_over, self.last_other_holder,
                                                            policy=EXIT)]
                self.holder_cached = lease.current_holder()
                if self.holder_cached not in (None, lease.holder):
                    self.last_other_holder = self.holder_cached
                self.bus.expire_aside(ASIDE_MAX_AGE_LEASES * self.rt.settings.leader_lease_ms / 1000)
                if self.role == roles.FOLLOWER and self.bus.epoch is None:
                    # no event read yet: take the leader's epoch, so that snapshots and
                    # /health here name the seq space the first events will carry
                    self.rt.epoch = self.bus.announced_epoch() or self.rt.epoch
            except FAILURES as exc:
                self.bus._failed(exc)
                if roles.holds_lease(self.role) and not lease.valid:
                    self.stop_leading(f"Redis unavailable past the lease ({exc})")
            gevent.sleep(period_s)

    # -- taking over ----------------------------------------------------------------

    def take_over(self, previous: str | None = None) -> None:
        """Just elected: catch up with the stream, seed the seq space, then lead. `previous`: the worker that
        held the lease last, as this one saw it.

        Redis failing before the leading starts (a blip just after the election)
        means standing down: the lease is released for whoever can catch up.
        """
        try:
            if previous is not None:
                self.bus.readers.presume_gone(previous)
            self.catch_up_and_lead()
        except (*FAILURES, LostLease) as exc:
            log.error("elected, but Redis failed before leading started (%s): standing down", exc)
            self.bus._failed(exc)
            self.rt.feeding_writer = False
            if self.role == roles.CANDIDATE:
                self.apply(roles.CATCH_UP_FAILED)
            self.rt._leading = []
            try:
                self.bus.lease.release()
            except FAILURES:
                pass  # it expires on its own

    def catch_up_and_lead(self) -> None:
        rt, bus = self.rt, self.bus
        if hasattr(rt.store, "insert_timeout_s"):
            rt.store.insert_timeout_s = INSERT_TIMEOUT_S
        events, epoch, _ = bus.tail(bus.stream_maxlen)
        counter_seq, counter_epoch = bus.counter()
        read_epoch = bus.epoch
        reads: list[Event] = []  # what this worker had read, for its writer
        if rt.writer is not None:
            # No yield from here to bus.received: the writer gets what this worker had already read (the
            # store may lack it), then, through _serve, all that follows. Where the stream no longer holds
            # it, the copy is this worker's cache: with Redis restarted empty under a paused leader, every
            # client had 61 events that the store never got, and no hole said so (an outside audit).
            rt.writer.discard_pending()
            if epoch is None or epoch == read_epoch:
                reads = roles.reads_to_store(rt.cache.events_after(0, rt.now_ms()), events, bus.last_seq)
                rt.writer.enqueue(reads)
            rt.feeding_writer = True
        if events:
            bus.received(events, epoch)  # whatever this worker's reader had not seen yet
        store_max, store_epoch, spool_max = 0, None, 0
        if rt.store is not None:
            store_max, store_epoch, spool_max = recover(rt, floor_seq=events[-1].seq if events else 0,
                                                        floor_epoch=epoch)
        space = roles.seq_floor(
            redis_seq=counter_seq, redis_epoch=counter_epoch,
            stream_seq=events[-1].seq if events else 0, stream_epoch=epoch,
            store_max=store_max or 0, store_epoch=store_epoch,
            # what this worker read, and what it numbered itself as the last leader (the stream may have lost
            # those before its reader had them back): no seq of either is given again
            seen_seq=max(bus.last_seq, bus.assigned_seq) if bus.assigned_epoch == bus.epoch else bus.last_seq,
            seen_epoch=bus.epoch, fresh_epoch=rt.new_epoch())
        seq, rt.epoch = bus.seed(space.floor, space.epoch)
        # Redis had no counter and this term continues an epoch: another worker may have read past `seq`
        bus.hold_for_reports(REPORTS_WAIT_S if counter_epoch is None and space.floor else None,
                             lambda before, after: self._raised(before, after))
        bus.restore_aside(seq, rt.epoch, ASIDE_MAX_AGE_LEASES * rt.settings.leader_lease_ms / 1000)
        rt.ingest.last_seq = seq  # its provisional numbering (the append script gives the real seqs) and the log's
        if reads and read_epoch != rt.epoch:
            # read in another seq space than the one the store continues: those seqs are not the store's
            rt.writer.discard_pending()
            reads = []
        held = heapq.merge((e.seq for e in reads), (e.seq for e in events) if epoch == rt.epoch else ())
        lost = roles.unfillable(store_max, spool_max, held, seq) if rt.store is not None else []
        for first, last in lost:
            # neither the store, nor the stream, nor what this worker read has them: resuming clients are
            # told, on every worker
            log.error("the store lacks seqs %d..%d and neither the stream nor this worker's cache holds them",
                      first, last)
            bus.add_hole(rt.epoch, first, last)
        if rt.store is not None and store_max is not None and store_epoch != rt.epoch:
            try:
                rt.store.set_meta("epoch", rt.epoch)
            except StoreError as exc:
                log.error("could not record the epoch in the store: %s", exc)
        if self.role == roles.CANDIDATE:
            self.apply(roles.CAUGHT_UP)
            rt._lead()
            log.info("leading: seqs continue after %d in epoch %s", seq, rt.epoch)

    def _raised(self, before: int, after: int) -> None:
        """The counter was raised from `before` to `after`, the highest seq another worker had read before Redis
        lost it: seqs this worker never read, in no stream, in no store (the store's floor was below `before`).
        Their events are in that worker's cache only: resuming clients are told they are missing."""
        log.warning("another worker had read up to seq %d before Redis lost the seq counter (this one to %d): "
                    "seqs continue after %d", after, before, after)
        if self.rt.store is None:
            return
        try:
            self.bus.add_hole(self.rt.epoch, before + 1, after)
        except FAILURES as exc:
            log.error("could not record that the store lacks seqs %d..%d: %s", before + 1, after, exc)

    def watch_lease(self) -> None:
        """Stop leading the moment the lease is no longer surely ours by this worker's own clock, even
        while a renew hangs on a stalled connection: that is before Redis lets anyone else take it
        (the lease counts from before the renew was sent), so two upstream connections never overlap."""
        lease = self.bus.lease
        while self.role in (roles.LEADER, roles.STEPPING_DOWN):
            remaining_s = lease.held_until - time.monotonic()
            if remaining_s <= 0:
                self.stop_leading("the lease was not renewed in time")
                return
            gevent.sleep(remaining_s + 0.001)

    # -- stepping down --------------------------------------------------------------

    def stop_leading(self, reason: str) -> None:
        """The lease is gone (taken over, fenced, Redis down past it): stop everything a leader does."""
        if not roles.holds_lease(self.role):
            return
        log.warning("no longer the leader: %s", reason)
        self.apply(roles.LEASE_LOST)
        rt = self.rt
        rt.feeding_writer = False
        rt.upstream.stop()
        if rt.demo is not None:
            rt.demo.stop()
        self.bus.set_aside(reason)  # for this worker's next term, if nobody else leads meanwhile
        if rt.writer is not None:
            rt.writer.discard_pending()  # the stream has them; the new leader writes them
        leading, rt._leading = rt._leading, []
        for greenlet in leading:
            if greenlet is not gevent.getcurrent():
                greenlet.kill(block=False)

    def step_down(self, flush) -> None:
        """SIGTERM: the upstream is stopped; let numbered events come back from the stream, flush the
        store while still holding (and renewing) the lease, and only then release it."""
        if not roles.holds_lease(self.role):
            self.apply(roles.SHUTDOWN)
            return
        was_leading = self.role == roles.LEADER
        self.apply(roles.SHUTDOWN)
        if was_leading:
            deadline = gevent.Timeout(DRAIN_WAIT_S)
            deadline.start()
            try:
                while self.bus.outbox_events or self.bus.last_seq < self.bus.assigned_seq:
                    gevent.sleep(0.02)
            except gevent.Timeout as exc:
                if exc is not deadline:
                    raise
                log.warning("shutdown: %d numbered events not read back from the stream in time",
                            self.bus.assigned_seq - self.bus.last_seq)
            finally:
                deadline.close()
            if self.role == roles.STEPPING_DOWN:
                flush()
        self.rt.feeding_writer = False
        if self.role == roles.STEPPING_DOWN:
            try:
                self.bus.lease.release()  # a follower takes over without waiting for the lease to lapse
            except FAILURES as exc:
                log.warning("could not release the lease: %s", exc)
            self.apply(roles.FLUSHED)

    # -- POST /publish ----------------------------------------------------------------

    def publish(self, body: bytes, recv_ms: int) -> list[int]:
        """The real seqs of a published frame, from whichever worker leads (NoLeader: 503)."""
        if self.role == roles.LEADER:
            return self.publish_here(body, recv_ms)
        try:
            return self.bus.request_publish(body, recv_ms)
        except FAILURES as exc:
            raise NoLeader(f"Redis unavailable: {exc}") from None

    def publish_here(self, body: bytes, recv_ms: int) -> list[int]:
        if self.role != roles.LEADER:
            raise NoLeader("this worker stopped leading")
        events, receipt = self.rt.ingest.publish(body, recv_ms)
        if not events:
            return []
        return receipt.seqs(self.bus.publish_timeout_s)
