"""The leader's appends never trim stream entries a live reader has not read (bus/readers.py), and a worker
that finds entries gone anyway tells its clients (reason `resync`) instead of skipping them.

Before: the publisher waited only for its own reader, and a follower busier than the leader through a
burst over STREAM_MAXLEN / 2 lost entries without a word to its clients (an outside check: 10,971 of
250,000). These run against the real Redis; readers run in threads (this process is not monkey-patched)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import gevent
import pytest
import redis
from support.cluster import OPEN_BUSES, SHARED_REDIS, close_open_buses, cluster_env, leading_with_a_client, prefix, role  # noqa: F401  (fixtures)
from support.events import trades, unique_sym
from support.waiting import wait_until

from handlers.events import make_event
from webapp.bus.readers import Readers, parse
from webapp.bus.redis import RedisBus

MAXLEN = 100
def bus_of(prefix: str, holder: str, deliver=None, stale_s: float = 5.0) -> RedisBus:  # noqa: F811
    bus = RedisBus(SHARED_REDIS, prefix, holder, deliver or (lambda events: None), lease_ms=60_000,
                   stream_maxlen=MAXLEN, read_block_ms=200, publish_timeout_s=1, reader_stale_s=stale_s)
    OPEN_BUSES.append(bus)
    return bus


def reading(bus: RedisBus) -> threading.Thread:
    thread = threading.Thread(target=bus.run_reader, daemon=True)
    thread.start()
    return thread


def provisional(n: int) -> list:
    return [make_event(i + 1, 1_000 + i, "T.X", {"n": i}) for i in range(n)]


def pump(until, timeout_s: float, what: str) -> None:
    """Let the publisher greenlet run (gevent.sleep) until `until()` holds."""
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.01)


def leading(prefix: str, seed: int, stale_s: float) -> Iterator[RedisBus]:  # noqa: F811
    bus = bus_of(prefix, "leader-1", stale_s=stale_s)
    assert bus.lease.acquire()
    bus.seed(seed, "E1")
    reader = reading(bus)  # the publisher waits for its own reader too
    publisher = gevent.spawn(bus.run_publisher)
    yield bus
    publisher.kill()
    bus.close()
    reader.join(timeout=5)


@pytest.fixture
def leader(prefix) -> Iterator[RedisBus]:  # noqa: F811
    yield from leading(prefix, 41, 5.0)


@pytest.fixture
def quick_leader(prefix) -> Iterator[RedisBus]:  # noqa: F811
    """From seq 0, a reader silent for 0.5 s is stale."""
    yield from leading(prefix, 0, 0.5)


def test_a_report_is_parsed_as_hostile_input():
    assert parse(b"3 41 E1") == (3, 41, "E1")
    assert parse(b"3 41 ") == (3, 41, "")
    for junk in (b"", b"x 41 E1", b"3 y E1", b"3 41", b"\xff\xfe 1 E", None, 7):
        assert parse(junk) is None


def test_a_slow_follower_gets_every_event_of_a_burst_many_times_the_stream_long(prefix, leader):  # noqa: F811
    got: list = []

    def slow(events) -> None:  # a follower busier than the leader: ~0.3 ms per event
        time.sleep(0.0003 * len(events))
        got.extend(events)

    follower = bus_of(prefix, "follower-1", slow)
    follower.last_id = b"0-0"
    reader = reading(follower)
    pump(lambda: follower.readers.client.hexists(follower.readers.key, "follower-1"), 5, "the follower's report")
    burst = 2_000  # 20 x STREAM_MAXLEN, published at once
    leader.publish(provisional(burst))
    pump(lambda: len(got) >= burst, 30, f"the follower to read {burst} events (it has {len(got)})")
    assert [e.seq for e in got] == list(range(42, 42 + burst))  # none trimmed before it read them
    assert follower.gaps == 0
    assert leader.waits_for_readers >= 1  # the publisher did wait for it
    follower.close()
    reader.join(timeout=5)


def test_the_publisher_never_runs_more_than_the_stream_ahead_of_a_live_reader(prefix, leader):  # noqa: F811
    # a live reader that does not move (its reports keep coming, its seq stays): the stream holds
    # everything after its seq, and the publisher goes no further
    other = Readers(leader.client, f"{prefix}:readers", "stuck-1", 5.0)
    other.report(41, "E1")
    leader.publish(provisional(1_000))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        other.report(41, "E1")  # live: its report changes
        gevent.sleep(0.05)
    assert leader.assigned_seq <= 41 + MAXLEN  # what it has not read fits in the stream's cap
    oldest = leader.client.xrange(leader.stream_key, count=1)[0][1]
    assert int(oldest[b"seq"]) == 42  # nothing it still has to read was trimmed
    assert leader.outbox_events > 0  # the rest waits in the outbox
    # it reads on: so does the publisher
    other.report(1_041, "E1")
    pump(lambda: leader.assigned_seq == 1_041, 10, "the rest to be appended")


def test_a_reader_silent_past_the_stale_time_is_not_waited_for(prefix, quick_leader):  # noqa: F811
    bus = quick_leader
    dead = Readers(bus.client, f"{prefix}:readers", "dead-1", 0.5)
    dead.report(0, "E1")  # then nothing: a worker that died without removing its field
    bus.publish(provisional(1_000))
    pump(lambda: bus.assigned_seq == 1_000, 10, "the publisher to stop waiting for the dead reader")
    assert bus.waits_for_readers == 1


def test_a_reader_that_comes_back_after_going_stale_is_waited_for_at_once(prefix, quick_leader):  # noqa: F811
    """A stopped worker continued (an outside check, SIGSTOP 8 s): the publisher, asking only when its cached
    floor ran out, went half a stream past the returning reader and trimmed entries it had still to read."""
    bus = quick_leader
    back = Readers(bus.client, f"{prefix}:readers", "back-1", 0.5)
    back.report(0, "E1")  # then silent past the stale time
    bus.publish(provisional(1_000))
    pump(lambda: bus.assigned_seq == 1_000, 10, "the publisher to stop waiting for the silent reader")
    bus.publish(provisional(10))  # asked while it is stale: no live reader, the floor is the counter
    pump(lambda: bus.assigned_seq == 1_010, 10, "the small frame")
    place = bus.assigned_seq - 90  # it comes back within the cap, more than half of it behind
    back.report(place, "E1")
    bus.publish(provisional(1_000))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        back.report(place, "E1")  # live again, not moving
        gevent.sleep(0.05)
    assert bus.assigned_seq <= place + MAXLEN
    assert int(bus.client.xrange(bus.stream_key, count=1)[0][1][b"seq"]) <= place + 1  # nothing it needs trimmed


def test_a_closed_worker_removes_its_report_so_nobody_waits_for_it(prefix, leader):  # noqa: F811
    follower = bus_of(prefix, "follower-2")
    follower.readers.report(41, "E1")
    key = follower.readers.key
    assert leader.client.hexists(key, "follower-2")
    follower.close()
    assert not leader.client.hexists(key, "follower-2")
    leader.publish(provisional(1_000))
    pump(lambda: leader.assigned_seq == 1_041, 5, "the append of all 1,000")  # well within the 5 s stale time
    assert leader.waits_for_readers == 0


def test_a_worker_that_misses_entries_closes_its_clients_to_resume_and_serves_no_resume_across_them(
        prefix, fresh_upstream, launch_relay, ws):  # noqa: F811
    """Entries gone before this worker read them (a reader stalled past the stale time, or Redis lost
    them): its /ws clients get `closing` `resync` and 1013, its cache is emptied, and a resume with `since`
    names the range missing rather than skipping it. Made here by moving the counter past 50 seqs and
    appending the next one, which is what a trim looks like to a reader."""
    relay, _env, client, sym = leading_with_a_client(prefix, fresh_upstream, launch_relay, ws)
    keys = redis.Redis.from_url(SHARED_REDIS)
    try:
        epoch = relay.health()["epoch"]
        last = int(keys.hget(f"{prefix}:seq", "seq"))
        jump = last + 51
        keys.hset(f"{prefix}:seq", "seq", jump)
        now_ms = int(time.time() * 1000)
        keys.xadd(f"{prefix}:events", {"seq": jump, "epoch": epoch,
                                       "e": f'{{"seq":{jump},"ts":{now_ms},"topic":"T.{sym}","data":{{"n":99}}}}'})
    finally:
        keys.close()
    frame = client.next_frame("closing")
    assert frame["reason"] == "resync"
    assert client.expect_close() == 1013
    health = relay.health()
    assert health["bus"]["gaps"] == 1 and health["bus"]["resyncs"] == 1
    resumed = ws(relay, topics=f"T.{sym}", since=3, epoch=epoch)
    snapshot = resumed.read_snapshot()
    assert snapshot["recovered"] is False and snapshot["missing"] == [last + 1, jump - 1]
    assert [e["seq"] for e in snapshot["events"]] == [jump]


def test_a_frame_larger_than_the_stream_reaches_every_worker_whole_and_a_publish_that_large_is_refused(
        prefix, fresh_upstream, launch_relay, ws):  # noqa: F811
    """With STREAM_MAXLEN 100, an upstream frame of 700 events goes into appends of at most 50, each waiting
    for both workers' readers: the follower's client gets all 700 once, in order. A POST /publish body is
    one append: above 50 items it is refused (413) rather than trimming what a reader has not read."""
    env = cluster_env(prefix, CLICKHOUSE_URL="none", STREAM_MAXLEN="100")
    leader = launch_relay(fresh_upstream, env)
    wait_until(lambda: role(leader) == "leader", 15, "the relay to lead")
    follower = launch_relay(fresh_upstream, env, wait_upstream=False)
    wait_until(lambda: role(follower) == "follower", 15, "the second relay to follow")
    sym = unique_sym()
    clients = [ws(relay, topics=f"T.{sym}", snapshot=0) for relay in (leader, follower)]
    for client in clients:
        client.read_snapshot()
    fresh_upstream.emit(trades(0, 700, sym=sym), batch=700)
    for client in clients:
        assert [e["data"]["n"] for e in client.wait_for_events(700, timeout_s=30)] == list(range(700))
    assert follower.health()["bus"]["gaps"] == 0
    refused = follower.request("POST", "/publish", json=trades(700, 751, sym=sym))
    assert refused.status_code == 413 and "at most 50" in refused.json()["error"]
    taken = follower.request("POST", "/publish", json=trades(700, 750, sym=sym))
    assert taken.status_code == 200 and len(taken.json()["seqs"]) == 50


def test_the_furthest_report_of_an_epoch_is_read_as_hostile_input(prefix):  # noqa: F811
    client = redis.Redis.from_url(SHARED_REDIS)
    key = f"{prefix}:readers"
    client.hset(key, mapping={"me": "1 999 E1", "a": "3 160 E1", "b": "2 170 E2", "c": "junk", "d": "4 120 E1",
                              "e": f"1 {2**53} E1", "f": b"\xff 500 E1"})
    readers = Readers(client, key, "me", 5.0)
    assert readers.highest("E1") == 160  # not its own, not another epoch's, nothing unreadable or past 2**53 - 1
    assert readers.highest("E3") is None
    client.delete(key)


def test_a_counter_seeded_after_redis_lost_it_is_raised_past_every_report_before_the_first_append(prefix, leader):  # noqa: F811
    """The leader fixture seeded 41 in E1; another worker says it read to 160 of E1 (Redis lost the counter
    under it): the first append waits the hold, then numbers from 161, and the leader is told 41 -> 160."""
    Readers(leader.client, f"{prefix}:readers", "ahead-1", 5.0).report(160, "E1")
    raised = []
    leader.hold_for_reports(0.3, lambda before, after: raised.append((before, after)))
    started = time.monotonic()
    leader.publish(provisional(5))
    gevent.sleep(0.15)
    assert leader.assigned_seq == 41 and leader.outbox_events == 5  # held
    pump(lambda: leader.assigned_seq == 165, 10, "the events appended after the raise")
    assert time.monotonic() - started >= 0.3
    assert raised == [(41, 160)]
    first = leader.client.xrange(leader.stream_key, count=1)[0][1]
    assert int(first[b"seq"]) == 161


def test_the_reader_of_the_worker_that_lost_the_lease_is_not_waited_for_until_it_reads_again(prefix, leader):  # noqa: F811
    """A SIGKILLed leader's last report stood live for stale_s (5 s) from when the new leader first read it:
    once the new leader's seqs ran half the stream past it, nothing was appended for ~5 s (a CI run of the
    SIGKILL hand-over test). The new leader presumes its predecessor gone; a report it writes after that is
    waited for again."""
    old = Readers(leader.client, f"{prefix}:readers", "old-leader", 5.0)
    old.report(41, "E1")  # its last report before it died
    leader.readers.presume_gone("old-leader")
    leader.publish(provisional(1_000))
    pump(lambda: leader.assigned_seq == 1_041, 10, "the burst appended past the dead leader's report")
    assert leader.waits_for_readers == 0
    # it was only paused: it reads again and reports, and is waited for like any live reader
    old.report(1_041, "E1")
    leader.publish(provisional(1_000))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        old.report(1_041, "E1")  # live: its report changes, its seq stays
        gevent.sleep(0.05)
    assert 1_041 + MAXLEN // 2 <= leader.assigned_seq <= 1_041 + MAXLEN and leader.waits_for_readers == 1
