"""The store writer keeps every event exactly once in the store, through outages, ambiguous failures and restarts."""

import gevent
import gevent.event
import orjson

from handlers.events import make_event
from webapp.store.base import QueryRefused, StoreUnavailable
from webapp.store.spool import Spool
from webapp.store.writer import StoreWriter, split_by_day

DAY = 86_400_000


class FakeStore:
    """An in-memory store that can be down, or fail after writing (an ambiguous time-out)."""

    backend = "fake"

    def __init__(self):
        self.rows = []
        self.inserts = []
        self.down = False
        self.land_then_fail = False
        self.poison = set()  # seqs the store refuses, every time
        self.refusals = 0
        self.hold = None  # an Event the insert waits on (a slow store)
        self.entered = gevent.event.Event()  # set when an insert starts waiting on `hold`

    def insert(self, events):
        if self.down:
            raise StoreUnavailable("down")
        if self.hold is not None:
            self.entered.set()
            self.hold.wait()
        if self.poison & {e.seq for e in events}:
            self.refusals += 1
            raise QueryRefused("Code: 53. Type mismatch")
        self.rows.extend(e.seq for e in events)
        self.inserts.append([e.seq for e in events])
        if self.land_then_fail:
            self.land_then_fail = False
            raise StoreUnavailable("timed out after the insert landed")

    def max_seq(self):
        if self.down:
            raise StoreUnavailable("down")
        return max(self.rows, default=0)


def events(first, n, ts=1_000):
    return [make_event(seq, ts, "t", {"n": seq}) for seq in range(first, first + n)]


def make_writer(tmp_path, store=None, max_bytes=1 << 20, poison_attempts=5, retry_ms=1):
    store = store or FakeStore()
    writer = StoreWriter(store, Spool(str(tmp_path / "spool"), max_bytes, fsync=False), batch_rows=100,
                         batch_ms=10, retry_min_ms=retry_ms, retry_max_ms=retry_ms, poison_attempts=poison_attempts)
    writer.start_from(store.max_seq(), spooled=False)
    return writer, store


def exactly_once(store, last):
    return sorted(store.rows) == list(range(1, last + 1))


def test_batches_are_inserted_in_order_and_the_spool_emptied(tmp_path):
    writer, store = make_writer(tmp_path)
    writer.enqueue(events(1, 5))
    writer.cycle()
    writer.enqueue(events(6, 5))
    writer.cycle()
    assert store.inserts == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert writer.spool.oldest() == [] and writer.ok


def test_an_outage_spools_and_recovery_writes_everything_once_in_order(tmp_path):
    writer, store = make_writer(tmp_path)
    writer.enqueue(events(1, 3))
    writer.cycle()
    store.down = True
    for first in (4, 7, 10):
        writer.enqueue(events(first, 3))
        writer.cycle()
    assert not writer.ok and writer.spool.events == 9 and store.rows == [1, 2, 3]
    store.down = False
    writer._retry_at = 0
    writer.cycle()
    assert writer.ok and store.rows == list(range(1, 13))
    assert writer.spool.oldest() == [] and writer.spool.events == 0


def test_an_insert_that_landed_before_failing_is_not_written_twice(tmp_path):
    writer, store = make_writer(tmp_path)
    # a retry delay no loaded machine outlasts within one cycle (1 ms did: the same cycle retried)
    writer.retry_min_ms = writer.retry_max_ms = 60_000
    store.land_then_fail = True
    writer.enqueue(events(1, 4))
    writer.cycle()
    assert not writer.ok
    writer.enqueue(events(5, 2))
    writer._retry_at = 0
    writer.cycle()
    assert exactly_once(store, 6)


def test_a_restart_replays_the_spool_without_duplicates(tmp_path):
    store = FakeStore()
    first, _ = make_writer(tmp_path, store)
    first.enqueue(events(1, 3))
    first.cycle()
    store.down = True
    first.enqueue(events(4, 3))
    first.cycle()  # spooled, not stored; then the process "dies"
    store.down = False
    store.rows.extend([4])  # and say the store had even taken part of it before the crash
    second = StoreWriter(store, Spool(str(tmp_path / "spool"), 1 << 20, fsync=False), batch_rows=100, batch_ms=10)
    records = second.spool.load()
    assert [e.seq for r in records for e in r.events] == [4, 5, 6]
    second.start_from(store.max_seq(), spooled=True)
    second.cycle()
    assert exactly_once(store, 6)


def test_a_full_spool_during_an_outage_drops_and_counts_and_recovers(tmp_path):
    writer, store = make_writer(tmp_path, max_bytes=600)
    holes = []
    writer.on_dropped = lambda first, last: holes.append((first, last))
    store.down = True
    writer.enqueue(events(1, 2))
    writer.cycle()
    writer.enqueue(events(3, 50))
    writer.cycle()
    assert writer.spool_full and writer.dropped == 50
    assert holes == [(3, 52)]  # the range is handed on, for resuming clients to be told
    store.down = False
    writer._retry_at = 0
    writer.enqueue(events(53, 2))
    writer.cycle()
    writer.cycle()
    assert sorted(store.rows) == [1, 2, 53, 54] and writer.ok and not writer.spool_full


def test_a_full_spool_with_the_store_up_still_writes_directly(tmp_path):
    writer, store = make_writer(tmp_path, max_bytes=200)
    writer.enqueue(events(1, 20))
    writer.cycle()
    assert store.rows == list(range(1, 21)) and writer.spool_full and writer.dropped == 0


def test_flush_writes_what_is_pending(tmp_path):
    writer, store = make_writer(tmp_path)
    writer.enqueue(events(1, 7))
    assert writer.flush(timeout_s=1)
    assert store.rows == list(range(1, 8))


def test_batches_never_span_two_days():
    evs = [make_event(1, DAY - 1, "t", {}), make_event(2, DAY, "t", {}), make_event(3, DAY + 5, "t", {})]
    assert [[e.seq for e in run] for run in split_by_day(evs)] == [[1], [2, 3]]


def test_a_spool_that_flaps_at_its_bound_is_reported_once(tmp_path, caplog):
    writer, store = make_writer(tmp_path, max_bytes=1200)
    store.down = True
    writer.enqueue(events(1, 2))
    writer.cycle()
    writer.enqueue(events(3, 40))  # does not fit
    writer.cycle()
    writer.enqueue(events(43, 1))  # a small one still fits: spool_full clears
    writer.cycle()
    assert not writer.spool_full
    writer.enqueue(events(44, 40))  # full again, moments later
    writer.cycle()
    assert writer.spool_full and writer.dropped == 80
    assert caplog.text.count("spool cannot take a batch") == 1


def cycles(writer, n):
    for _ in range(n):
        writer._retry_at = 0
        writer.cycle()


def test_a_batch_the_store_always_refuses_goes_to_the_dead_letter_file_and_the_writer_moves_on(tmp_path):
    writer, store = make_writer(tmp_path, poison_attempts=3)
    holes = []
    writer.on_dropped = lambda first, last: holes.append((first, last))
    store.poison = {5}
    writer.enqueue(events(1, 3))
    writer.cycle()
    writer.enqueue(events(4, 3))  # holds the poison
    writer.cycle()
    writer.enqueue(events(7, 3))  # waits behind it in the spool
    cycles(writer, 3)
    assert store.refusals == 3 and sorted(store.rows) == [1, 2, 3, 7, 8, 9]
    assert holes == [(4, 6)] and writer.dead_letter_events == 3 and writer.dead_letter_last == (4, 6)
    assert writer.ok and writer.spool.oldest() == [] and writer.spool.events == 0
    (letter,) = (tmp_path / "dead-letter").iterdir()
    header, *lines = letter.read_bytes().splitlines()
    assert orjson.loads(header)["first_seq"] == 4 and "Type mismatch" in orjson.loads(header)["reason"]
    assert [orjson.loads(line)["seq"] for line in lines] == [4, 5, 6]
    writer.enqueue(events(10, 2))
    writer.cycle()
    assert sorted(store.rows) == [1, 2, 3, 7, 8, 9, 10, 11]


def test_a_poison_batch_left_in_the_spool_by_a_crash_is_dead_lettered_after_the_restart_not_crash_looped(tmp_path):
    store = FakeStore()
    store.poison = {2}
    # the first writer's retry is far off: its one cycle must not drain (and dead-letter) the batch
    # itself, which with a 1 ms retry it did whenever the cycle took longer than the retry delay
    first, _ = make_writer(tmp_path, store, poison_attempts=2, retry_ms=60_000)
    first.enqueue(events(1, 3))
    first.cycle()  # refused once; the process dies here, the batch in the spool
    assert store.refusals == 1 and first.dead_letter_events == 0 and first.spool.events == 3
    second = StoreWriter(store, Spool(str(tmp_path / "spool"), 1 << 20, fsync=False), batch_rows=100,
                         batch_ms=10, retry_min_ms=1, retry_max_ms=1, poison_attempts=2)
    second.spool.load()
    second.start_from(store.max_seq(), spooled=True)
    second.enqueue(events(4, 2))
    cycles(second, 3)
    assert sorted(store.rows) == [4, 5] and second.dead_letter_events == 3 and second.ok


def test_an_unreachable_store_is_never_mistaken_for_a_poison_batch(tmp_path):
    writer, store = make_writer(tmp_path, poison_attempts=2)
    store.down = True
    writer.enqueue(events(1, 3))
    cycles(writer, 10)
    assert writer.dead_letter_events == 0 and writer.spool.events == 3
    store.down = False
    cycles(writer, 1)
    assert store.rows == [1, 2, 3]


def test_a_driver_error_on_one_batch_does_not_kill_the_writer(tmp_path):
    writer, store = make_writer(tmp_path, poison_attempts=1)

    def broken_insert(evs):
        raise TypeError("cannot encode")

    store.insert = broken_insert
    writer.enqueue(events(1, 2))
    writer.cycle()
    assert writer.dead_letter_events == 2


def test_the_shutdown_flush_never_runs_a_cycle_beside_the_writer_greenlets_own(tmp_path):
    writer, store = make_writer(tmp_path)
    store.hold = gevent.event.Event()
    inside = []
    real_insert = store.insert

    def counting_insert(evs):
        inside.append(1)
        assert len(inside) == 1, "two inserts at once on one connection"
        try:
            real_insert(evs)
        finally:
            inside.pop()

    store.insert = counting_insert
    writer.enqueue(events(1, 3))
    running = gevent.spawn(writer.cycle)
    assert store.entered.wait(5)  # the writer greenlet is inside its insert
    writer.enqueue(events(4, 3))
    flushing = gevent.spawn(writer.flush, 2)
    gevent.sleep(0.01)
    store.hold.set()
    gevent.joinall([running, flushing], timeout=5, raise_error=True)
    assert flushing.value is True and sorted(store.rows) == list(range(1, 7))


def test_a_cycle_killed_before_its_batch_reached_the_spool_puts_the_batch_back(tmp_path):
    gate = gevent.event.Event()
    store = FakeStore()
    writer = StoreWriter(store, Spool(str(tmp_path / "spool"), 1 << 20, fsync=False), batch_rows=100, batch_ms=10,
                         in_thread=lambda fn, *args: (gate.wait(), fn(*args))[1])
    writer.start_from(0, spooled=False)
    writer.enqueue(events(1, 3))
    cycle = gevent.spawn(writer.cycle)
    gevent.sleep(0.01)  # waiting on the spool's disk
    cycle.kill(ValueError("crashed"))
    assert [e.seq for e in writer.pending] == [1, 2, 3] and writer.store_max is None
    gate.set()
    writer.cycle()
    assert store.rows == [1, 2, 3]


def test_the_spool_is_drained_one_bounded_chunk_at_a_time_and_each_written_chunk_deleted(tmp_path):
    writer, store = make_writer(tmp_path)
    writer.spool.chunk_bytes = 1  # every chunk one row (one batch here)
    store.down = True
    for first in (1, 4, 7):
        writer.enqueue(events(first, 3))
        writer.cycle()
    assert writer.spool.events == 9
    read = []
    real = writer.spool.oldest
    writer.spool.oldest = lambda after=0: read.append([e.seq for r in real(after) for e in r.events]) or real(after)
    store.down = False
    store.poison = {7}  # the third chunk is refused: the first two are in, and deleted
    cycles(writer, 1)
    assert sorted(store.rows) == [1, 2, 3, 4, 5, 6]
    assert writer.spool.events == 3 and [e.seq for r in writer.spool.load() for e in r.events] == [7, 8, 9]
    assert read == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]  # each chunk read once, alone


def test_a_drain_chunk_holds_at_most_its_byte_bound_and_at_least_one_row(tmp_path):
    spool = Spool(str(tmp_path / "spool"), 1 << 30, fsync=False)
    for first in range(1, 1001, 10):
        spool.append(events(first, 10))
    spool.chunk_bytes = 2_000  # about four rows of ten events
    seen, rows_per_chunk = [], []
    while records := spool.oldest():
        size = sum(len(b"\n".join(e.json for e in r.events)) for r in records)
        assert size <= spool.chunk_bytes, size
        seen += [e.seq for r in records for e in r.events]
        rows_per_chunk.append(len(records))
        spool.remove_through(records[-1].id)
    assert seen == list(range(1, 1001)) and spool.events == 0 and spool.bytes == 0
    assert min(rows_per_chunk[:-1]) >= 3 and len(rows_per_chunk) < 35  # chunks as full as the bound lets them be
    spool.append(events(2000, 30))  # a row larger than the bound is still read, alone
    spool.chunk_bytes = 1
    assert [len(r.events) for r in spool.oldest()] == [30]


def test_a_batch_being_inserted_is_not_reported_as_spooled_backlog(tmp_path):
    writer, store = make_writer(tmp_path)
    store.hold = gevent.event.Event()
    writer.enqueue(events(1, 3))
    cycle = gevent.spawn(writer.cycle)
    assert store.entered.wait(5)  # inside the insert (the spool's write may yield first: wait for it, not a time)
    assert writer._backlog is False  # /health counts spooled events only while there is a backlog
    store.hold.set()
    cycle.join(5)
    assert store.rows == [1, 2, 3]


def test_a_cycle_killed_during_the_insert_of_a_spooled_batch_leaves_it_to_the_drain(tmp_path):
    # the retry far off: a cycle descheduled past a 1 ms retry would drain at once and wait on `hold`
    # again inside the killed greenlet, which kill() then waits for forever
    writer, store = make_writer(tmp_path, retry_ms=60_000)
    store.hold = gevent.event.Event()
    writer.enqueue(events(1, 3))
    cycle = gevent.spawn(writer.cycle)
    assert store.entered.wait(5)  # inside the insert of the spooled batch
    cycle.kill(ValueError("crashed"))
    assert writer._backlog is True and writer.pending == []
    store.hold.set()
    cycles(writer, 1)
    assert store.rows == [1, 2, 3] and writer.spool.events == 0


def test_loading_a_spool_at_start_keeps_only_the_newest_records_but_counts_them_all(tmp_path):
    spool = Spool(str(tmp_path / "spool"), 1 << 20, fsync=False)
    for first in range(1, 100, 10):
        spool.append(events(first, 10))
    again = Spool(str(tmp_path / "spool"), 1 << 20)
    kept = again.load(keep_events=25)
    assert [e.seq for r in kept for e in r.events] == list(range(71, 101))  # whole records covering 25
    assert again.events == 100
    assert [e.seq for r in Spool(str(tmp_path / "spool"), 1 << 20).load() for e in r.events] == list(range(1, 101))


# -- the fence (a cluster's lease) ----------------------------------------------------------------


def test_a_writer_whose_fence_is_closed_writes_nothing_and_holds_what_it_has(tmp_path):
    writer, store = make_writer(tmp_path)
    writer.enqueue(events(1, 5))
    writer.cycle()
    allowed = [False]
    writer.may_write = lambda: allowed[0]
    writer.enqueue(events(6, 5))
    writer.cycle()
    assert store.inserts == [[1, 2, 3, 4, 5]] and [e.seq for e in writer.pending] == [6, 7, 8, 9, 10]
    assert not writer.flush(timeout_s=0.1)  # a graceful flush of a fenced writer does nothing, quickly
    allowed[0] = True  # a lease that is surely valid again (a lost one discards instead)
    writer.cycle()
    assert store.inserts == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]


def test_a_fence_that_closes_between_the_check_and_the_insert_stops_the_insert(tmp_path):
    """The lease lapses while the batch is spooled (a yield for file I/O): the insert is not sent,
    and the spooled batch stays for whoever may write."""
    checks = iter([True, False])
    writer, store = make_writer(tmp_path)
    writer.may_write = lambda: next(checks, False)
    writer.enqueue(events(1, 5))
    writer.cycle()
    assert store.inserts == [] and writer.spool.events == 5


def test_stored_through_follows_what_is_pending_in_hand_and_spooled_behind_the_store(tmp_path):
    """What a resume waits on (webapp/streams.py): every event up to a seq in the store, or not yet."""
    writer, store = make_writer(tmp_path)
    assert writer.stored_through(10)
    writer.enqueue(events(1, 5))
    assert writer.stored_through(0) and not writer.stored_through(1)
    writer.cycle()
    assert writer.stored_through(5)
    store.down = True
    writer.enqueue(events(6, 5))
    writer.cycle()  # spooled: the store is down (and what it holds unknown until it answers)
    assert not writer.stored_through(6)
    store.down = False
    writer._retry_at = 0.0
    writer.cycle()  # drained from the spool
    assert writer.stored_through(10) and exactly_once(store, 10)
    store.hold = gevent.event.Event()
    writer.enqueue(events(11, 2))
    inserting = gevent.spawn(writer.cycle)
    store.entered.wait(2)
    assert not writer.stored_through(11)  # in hand, or spooled and not yet confirmed
    store.hold.set()
    inserting.join(2)
    assert writer.stored_through(12)


def test_while_the_store_hangs_each_batch_goes_to_the_spool_and_then_in_once_in_order(tmp_path):
    """A store that hangs rather than refuses (a stopped server) held the cycle in its insert for the driver's
    30 s, and the batches behind it waited in memory: a SIGKILL lost them all (an outside audit: 5,745
    events). They go to the spool, behind the batch being inserted, and in after it."""
    writer, store = make_writer(tmp_path)
    store.hold = gevent.event.Event()
    task = gevent.spawn(writer.run)
    try:
        writer.enqueue(events(1, 3))
        writer.hurry()
        assert store.entered.wait(5)  # the first batch is spooled and its insert hangs
        for first in (4, 7, 10):
            writer.enqueue(events(first, 3))
            gevent.sleep(0.05)  # a few batch intervals (10 ms)
        assert writer.pending == [] and writer.spool.events == 12  # the hanging batch and the three behind it
        assert writer.store_stalled_s() > 0.1 and not writer.stored_through(4)
        # what a SIGKILL now would leave: the spool a restart writes back (its own process's writer)
        assert sorted(e.seq for r in Spool(str(tmp_path / "spool"), 1 << 20, fsync=False).load() for e in r.events) \
            == list(range(1, 13))
        store.hold.set()
        deadline = gevent.Timeout(5)
        with deadline:
            while not (exactly_once(store, 12) and writer.spool.events == 0):
                gevent.sleep(0.01)
        assert [s for batch in store.inserts for s in batch] == list(range(1, 13))  # in order, once
        assert writer.store_stalled_s() == 0 and writer.stored_through(12)
    finally:
        task.kill()


def test_a_shutdown_flush_while_the_store_hangs_keeps_what_is_pending_in_the_spool(tmp_path):
    """SIGTERM with a stopped ClickHouse: the flush could not get the cycle (stuck in its insert) and gave
    up, and the pending events were gone after the restart (an outside audit: 3,830 events)."""
    writer, store = make_writer(tmp_path)
    store.hold = gevent.event.Event()
    writer.enqueue(events(1, 3))
    running = gevent.spawn(writer.cycle)
    assert store.entered.wait(5)
    writer.enqueue(events(4, 5))
    assert writer.flush(0.2) is True and writer.pending == []
    running.kill()  # the process exits
    again, _ = make_writer(tmp_path, store=FakeStore())
    assert sorted(e.seq for r in again.spool.load() for e in r.events) == list(range(1, 9))


def test_a_spool_whose_written_rows_cannot_be_deleted_on_a_full_disk_still_lets_every_batch_in(tmp_path):
    """After an outage on a nearly full disk the drain's inserts landed but deleting their rows failed (SQLite
    needs room to delete): the drain failed on every cycle, the backlog never ended, and every batch after
    it was dropped with the store up (an outside audit: 22,130 events in 20 s). The written rows are kept
    and read past; new batches go in; the rows are deleted once there is room."""
    writer, store = make_writer(tmp_path)
    store.down = True
    writer.enqueue(events(1, 5))
    writer.cycle()
    assert writer.spool.events == 5
    real_remove, real_append = writer.spool.remove_through, writer.spool.append
    disk_full = OSError(28, "database or disk is full")

    def no_room(*args):
        raise disk_full

    writer.spool.remove_through = no_room
    writer.spool.append = no_room
    store.down = False
    writer._retry_at = 0
    writer.cycle()  # the drain: 1..5 in, their rows kept
    assert store.rows == [1, 2, 3, 4, 5] and not writer._backlog
    for first in (6, 11):
        writer.enqueue(events(first, 5))
        writer.cycle()  # the spool takes nothing: straight into the store
    assert exactly_once(store, 15) and writer.dropped == 0
    writer.spool.remove_through, writer.spool.append = real_remove, real_append
    store.down = True  # the next outage spools again, behind the kept rows
    writer.enqueue(events(16, 5))
    writer.cycle()
    store.down = False
    writer._retry_at = 0
    writer.cycle()
    assert exactly_once(store, 20) and writer.spool.events == 0 and writer.dropped == 0
