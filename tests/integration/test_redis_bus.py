"""The Redis bus against a real Redis: the append script is the one place seqs and epochs are given,
fenced by the lease's token; the seed; /publish requests; shared store holes (contract §8, §10)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import gevent
import pytest
from support.cluster import OPEN_BUSES, SHARED_REDIS, close_open_buses  # noqa: F401  (a fixture)

from handlers.events import event_from_json, make_event
from webapp.bus.redis import NoLeader, RedisBus


def bus_of(prefix: str, holder: str, delivered: list | None = None) -> RedisBus:
    sink = delivered if delivered is not None else []
    bus = RedisBus(SHARED_REDIS, prefix, holder, sink.extend, lease_ms=5000, stream_maxlen=1000,
                   publish_timeout_s=1)
    OPEN_BUSES.append(bus)
    return bus


def provisional(n: int) -> list:
    """Events as the leader's ingest makes them: numbered 1.. locally, renumbered by the script."""
    return [make_event(i + 1, 1_000 + i, "T.X", {"n": i}) for i in range(n)]


def stream_seqs(bus: RedisBus) -> list[tuple[int, str, int]]:
    entries = bus.client.xrange(bus.stream_key)
    return [(int(f[b"seq"]), f[b"epoch"].decode(), event_from_json(f[b"e"]).seq) for _, f in entries]


@pytest.fixture
def leader(prefix) -> Iterator[RedisBus]:
    bus = bus_of(prefix, "leader-1")
    assert bus.lease.acquire()
    bus.seed(41, "E1")
    publisher = gevent.spawn(bus.run_publisher)
    yield bus
    publisher.kill()


def test_the_append_script_numbers_events_from_the_counter_and_writes_the_seq_into_each_event(leader):
    receipt = leader.publish(provisional(3), receipt=True)
    assert receipt.seqs(5) == [42, 43, 44]
    assert stream_seqs(leader) == [(42, "E1", 42), (43, "E1", 43), (44, "E1", 44)]
    events = [event_from_json(f[b"e"]) for _, f in leader.client.xrange(leader.stream_key)]
    assert [e.data for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}] and events[0].ts == 1_000
    assert leader.counter() == (44, "E1")


def test_a_worker_that_does_not_hold_the_lease_cannot_create_a_seq(prefix, leader):
    stale = bus_of(prefix, "paused-leader")
    fenced = []
    stale.on_fenced = fenced.append
    publisher = gevent.spawn(stale.run_publisher)
    try:
        receipt = stale.publish(provisional(2), receipt=True)
        with pytest.raises(NoLeader, match="lease"):
            receipt.seqs(5)
    finally:
        publisher.kill()
    assert fenced == ["lost the leader lease"]
    assert stale_entries(stale) == [] and leader.counter() == (41, "E1")


def stale_entries(bus: RedisBus) -> list:
    return bus.client.xrange(bus.stream_key)


def test_an_append_without_a_counter_is_refused_until_the_counter_is_seeded_again(leader):
    leader.client.delete(leader.counter_key)  # Redis lost its data
    receipt = leader.publish(provisional(1), receipt=True)
    with pytest.raises(NoLeader, match="counter"):
        receipt.seqs(5)
    assert stale_entries(leader) == []


def test_the_seed_keeps_an_existing_counter_and_is_fenced(prefix, leader):
    assert leader.seed(10, "OTHER") == (41, "E1")  # Redis's counter is the authority
    assert leader.seed(100, "E1") == (100, "E1")  # ... raised only to a higher floor in its own epoch
    with pytest.raises(Exception, match="lease"):
        bus_of(prefix, "not-the-holder").seed(500, "E1")
    assert leader.counter() == (100, "E1")


def test_a_publish_request_from_any_worker_gets_the_seqs_the_leader_gave(prefix, leader):
    follower = bus_of(prefix, "follower")
    answers = []
    # the follower blocks in its own thread (no monkey patching here); the leader serves in a greenlet
    caller = threading.Thread(target=lambda: answers.append(follower.request_publish(b'[{"a":1},{"a":2}]', 1)))
    caller.start()
    try:
        assert leader.serve_publish_request(lambda body, recv_ms: [7, 8] if body == b'[{"a":1},{"a":2}]' else [], 5)
    finally:
        caller.join(5)
    assert answers == [[7, 8]]


def test_a_publish_request_nobody_answers_is_refused_and_never_published_later(prefix, leader):
    follower = bus_of(prefix, "follower")
    with pytest.raises(NoLeader, match="did not answer"):
        follower.request_publish(b'{"a":1}', 1)
    handled = []
    assert not leader.serve_publish_request(lambda body, recv_ms: handled.append(body) or [1], 1)
    assert handled == [] and leader.client.llen(leader.requests_key) == 0  # taken, and dropped  # its caller was told it failed: publishing it now would make that a lie


def test_no_leader_at_all_is_refused_at_once(prefix):
    with pytest.raises(NoLeader, match="no leader"):
        bus_of(prefix, "alone").request_publish(b'{"a":1}', 1)


def test_store_holes_are_shared_through_redis_and_merged(prefix):
    one, two = bus_of(prefix, "w1"), bus_of(prefix, "w2")
    one.add_hole("E1", 10, 20)
    two.add_hole("E1", 21, 30)
    two.add_hole("E2", 5, 6)
    assert one.holes("E1") == two.holes("E1") == [(10, 30)]
    assert one.holes("E2") == [(5, 6)]


def test_an_append_sent_again_after_a_lost_answer_is_not_appended_twice(leader):
    keys = [leader.lease.key, leader.stream_key, leader.counter_key, f"{leader.prefix}:append:test:1"]
    args = [leader.lease.holder, 1000, b'"ts":1,"topic":"T.X","data":{"n":0}}']
    first = leader._append(keys=keys, args=args)
    again = leader._append(keys=keys, args=args)  # a time-out after the script ran: the same batch again
    assert first == again == [1, b"42", b"42", b"E1"]
    assert stream_seqs(leader) == [(42, "E1", 42)] and leader.counter() == (42, "E1")


def test_a_publish_whose_caller_gave_up_before_the_append_is_never_appended(prefix):
    bus = bus_of(prefix, "leader-2")
    assert bus.lease.acquire()
    bus.seed(0, "E1")
    receipt = bus.publish(provisional(1), receipt=True)  # no publisher running yet: Redis "unavailable"
    with pytest.raises(NoLeader, match="got no seq"):
        receipt.seqs(0.05)
    bus.publish(provisional(1))
    publisher = gevent.spawn(bus.run_publisher)
    try:
        wait = 0
        while bus.published < 1 and wait < 100:
            gevent.sleep(0.01)
            wait += 1
    finally:
        publisher.kill()
    assert [seq for seq, _, _ in stream_seqs(bus)] == [1]  # only the second one


def test_the_reader_reads_on_after_redis_drops_its_connection_and_loses_or_repeats_nothing(prefix, leader):
    # the reader holds one connection between its XREADs (RedisBus._xread): a connection the
    # server drops mid-read is replaced and the read goes on from the last entry it took.
    # This process is not monkey-patched: the reader gets a thread of its own, and close() ends it.
    got: list = []
    follower = bus_of(prefix, "follower-1", got)
    reader = threading.Thread(target=follower.run_reader, daemon=True)
    reader.start()

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            gevent.sleep(0.01)  # the leader's publisher greenlet runs meanwhile

    leader.publish(provisional(3))
    wait_for(3)
    first = follower._read_conn
    port = first._sock.getsockname()[1]
    assert leader.client.client_kill_filter(_type="normal", addr=f"127.0.0.1:{port}") == 1
    leader.publish(provisional(4))
    wait_for(7)
    gevent.sleep(0.3)  # anything read twice would have come by now
    assert [e.seq for e in got] == list(range(42, 49))
    assert follower._read_conn is not None and follower._read_conn._sock.getsockname()[1] != port
    follower.close()
    reader.join(timeout=5)
    assert not reader.is_alive()
