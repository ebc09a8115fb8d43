"""The hub builds each batch's frame once per subscription and wire format, and hands the same bytes to every client."""

import pytest

from handlers.events import make_event
from handlers.topics import compile_patterns
from webapp.hub import Hub


class FakeClient:
    def __init__(self, patterns=("*",), kind="ws", after_seq=0):
        self.kind = kind
        self.matcher = compile_patterns(patterns)
        self.after_seq = after_seq
        self.frames = []
        self.closed_with = None

    def encode(self, events):
        return (self.kind + ":" + ",".join(str(e.seq) for e in events)).encode()

    def deliver(self, frame, n_events):
        self.frames.append((frame, n_events))

    def close(self, reason, code):
        self.closed_with = (reason, code)


def events(*topics, first=1):
    return [make_event(first + i, 0, t, {}) for i, t in enumerate(topics)]


def make_hub(clock=lambda: 0.0):
    """A hub whose flushes take no time on the clock that times a rate's releases (tests give now_s)."""
    delivered = []
    return Hub(0, on_delivered=lambda kind, frames, n: delivered.append((kind, frames, n)), clock=clock), delivered


def test_clients_with_the_same_subscription_share_one_frame_object():
    hub, delivered = make_hub()
    a, b = FakeClient(), FakeClient()
    hub.add(a)
    hub.add(b)
    hub.flush(events("T.AAPL", "Q.MSFT"))
    assert a.frames == [(b"ws:1,2", 2)]
    assert a.frames[0][0] is b.frames[0][0]
    assert delivered == [("ws", 2, 4)]


def test_each_wire_format_is_encoded_once_per_group():
    hub, _ = make_hub()
    ws, sse = FakeClient(kind="ws"), FakeClient(kind="sse")
    hub.add(ws)
    hub.add(sse)
    hub.flush(events("T.AAPL"))
    assert (ws.frames, sse.frames) == ([(b"ws:1", 1)], [(b"sse:1", 1)])


def test_topic_patterns_filter_the_batch():
    hub, _ = make_hub()
    trades, aapl, nothing = FakeClient(("T.*",)), FakeClient(("Q.AAPL", "T.AAPL")), FakeClient(("X",))
    for c in (trades, aapl, nothing):
        hub.add(c)
    hub.flush(events("T.AAPL", "Q.AAPL", "T.MSFT"))
    assert trades.frames == [(b"ws:1,3", 2)]
    assert aapl.frames == [(b"ws:1,2", 2)]
    assert nothing.frames == []


def test_a_client_that_joined_mid_batch_gets_only_what_its_snapshot_lacked():
    hub, _ = make_hub()
    old, new = FakeClient(), FakeClient(after_seq=2)
    hub.add(old)
    hub.add(new)
    hub.flush(events("a", "b", "c", "d"))
    assert old.frames == [(b"ws:1,2,3,4", 4)]
    assert new.frames == [(b"ws:3,4", 2)]


def test_resubscribing_moves_a_client_between_groups():
    hub, _ = make_hub()
    c = FakeClient(("T.*",))
    hub.add(c)
    hub.resubscribe(c, ("Q.*",))
    hub.flush(events("T.AAPL", "Q.AAPL"))
    assert c.frames == [(b"ws:2", 1)]
    assert hub.client_count == 1


def test_removed_clients_get_nothing_and_are_not_counted():
    hub, _ = make_hub()
    c = FakeClient()
    hub.add(c)
    hub.remove(c)
    hub.remove(c)  # twice is harmless
    hub.flush(events("T.AAPL"))
    assert c.frames == [] and hub.client_count == 0 and hub.clients_by_kind == {"ws": 0}


def test_a_client_removed_during_a_flush_does_not_disturb_the_others():
    hub, _ = make_hub()

    class Leaver(FakeClient):
        def deliver(self, frame, n_events):
            hub.remove(self)

    leaver, stayer = Leaver(), FakeClient()
    hub.add(leaver)
    hub.add(stayer)
    hub.flush(events("x"))
    assert stayer.frames == [(b"ws:1", 1)]


def test_close_all_tells_every_client_the_reason():
    hub, _ = make_hub()
    a, b = FakeClient(), FakeClient(("T.*",), kind="sse")
    hub.add(a)
    hub.add(b)
    hub.close_all("shutdown", 1001)
    assert a.closed_with == b.closed_with == ("shutdown", 1001)


def test_publish_queues_events_for_the_next_flush():
    hub, _ = make_hub()
    hub.publish(events("x", "y"))
    hub.publish([])
    assert [e.seq for e in hub._pending] == [1, 2]


def test_every_membership_change_is_reported_once_with_the_patterns_before_and_after():
    hub, _ = make_hub()
    changes = []
    hub.on_subscription = lambda client, before, after: changes.append((client, before, after))
    a = FakeClient(("T.AAPL",))
    hub.add(a)
    hub.resubscribe(a, ("T.AAPL", "Q.*"))
    hub.remove(a)
    hub.remove(a)  # already gone: nothing to report
    assert changes == [(a, (), ("T.AAPL",)), (a, ("T.AAPL",), ("T.AAPL", "Q.*")), (a, ("T.AAPL", "Q.*"), ())]


class RatedClient(FakeClient):
    def __init__(self, patterns=("*",), max_hz=None, kind="ws"):
        super().__init__(patterns, kind)
        self.max_hz = max_hz

    def encode(self, events, conflated=0):
        return super().encode(events) + (b"+%d" % conflated if conflated else b"")


def test_clients_at_one_rate_share_one_conflation_and_one_frame_per_release():
    hub, delivered = make_hub()
    slow = [RatedClient(max_hz=2.0) for _ in range(3)]
    live = RatedClient()
    for c in (*slow, live):
        hub.add(c)
    hub.flush(events("a"), now_s=10.0)
    hub.flush(events("a", "b", "a", first=2), now_s=10.1)
    assert hub._next_timer(10.1) == pytest.approx(0.4)
    hub.flush([], now_s=10.5)
    assert slow[0].frames == [(b"ws:1", 1), (b"ws:3,4+1", 2)]
    assert all(c.frames[1][0] is slow[0].frames[1][0] for c in slow)
    assert live.frames == [(b"ws:1", 1), (b"ws:2,3,4", 3)]
    assert hub.mode_counts() == {"live": 1, "rate": 3, "conflated": 0}


def test_a_new_rate_moves_a_client_to_another_group():
    hub, _ = make_hub()
    c = RatedClient(max_hz=1.0)
    hub.add(c)
    hub.flush(events("a"), now_s=0.0)
    hub.resubscribe(c, ("*",), None)
    hub.flush(events("a", "a", first=2), now_s=0.1)
    assert c.frames == [(b"ws:1", 1), (b"ws:2,3", 2)]
    assert hub.mode_counts()["rate"] == 0


class SlowClient(RatedClient):
    """A client whose backlog the test sets; it asks the hub to conflate when over its bound."""

    def __init__(self, hub, patterns=("*",)):
        super().__init__(patterns)
        self.hub = hub
        self.backlog = 0
        self.said = []
        self.carried = []  # the events the hub said each frame carries

    def deliver(self, frame, n_events):
        self.frames.append((frame, n_events))
        self.carried.append(self.hub.delivering[0])
        self.backlog += n_events
        if self.backlog > 4 and self.hub.mode_of(self) == "live":
            self.hub.conflate_slow(self)

    def caught_up(self):
        return self.backlog <= 2

    def tell_slow(self, mode):
        self.said.append(mode)


def test_a_slow_client_gets_the_newest_value_per_topic_until_it_catches_up_then_every_event():
    hub, _ = make_hub()
    slow, other = SlowClient(hub), FakeClient()
    hub.add(slow)
    hub.add(other)
    hub.flush(events("a", "b", "a", "b", "a"))  # 5 > 4: its last whole frame, then conflated
    assert slow.said == ["conflated"] and hub.mode_counts()["conflated"] == 1
    hub.flush(events("a", "b", "a", first=6))
    hub.flush(events("c", first=9))
    assert len(slow.frames) == 1  # nothing written while it is behind
    slow.backlog = 0  # it read everything
    hub.flush(events("a", first=10))
    assert slow.frames[1] == (b"ws:7,9,10+2", 3)  # newest of b, c, a; 6 and 8 were replaced
    assert slow.said == ["conflated", "live"]
    hub.flush(events("b", first=11))
    assert slow.frames[2] == (b"ws:11", 1)
    assert [f for f, _ in other.frames] == [b"ws:1,2,3,4,5", b"ws:6,7,8", b"ws:9", b"ws:10", b"ws:11"]


def test_a_slow_client_is_checked_without_new_events_and_leaves_cleanly():
    hub, _ = make_hub()
    slow = SlowClient(hub)
    hub.add(slow)
    hub.flush(events("a", "a", "a", "a", "a"))
    assert hub._next_timer(0.0) is not None
    slow.backlog = 0
    hub.flush([])
    assert slow.said == ["conflated", "live"] and hub.mode_counts() == {"live": 1, "rate": 0, "conflated": 0}
    hub.flush(events("a", "a", "a", "a", "a", first=6))
    hub.remove(slow)
    assert hub.client_count == 0 and hub.clients_by_kind == {"ws": 0}


def test_a_release_that_passes_the_bound_again_conflates_again_instead_of_going_live():
    hub, _ = make_hub()

    class Tiny(SlowClient):
        def deliver(self, frame, n_events):
            self.frames.append((frame, n_events))
            self.backlog += n_events
            if self.backlog > 1 and self.hub.mode_of(self) == "live":
                self.hub.conflate_slow(self, [])

        def caught_up(self):
            return self.backlog == 0

    slow = Tiny(hub)
    hub.add(slow)
    hub.flush(events("a", "b"))
    assert slow.said == ["conflated"]
    hub.flush(events("a", "b", first=3))
    slow.backlog = 0
    hub.flush([])  # the release (2 events) passes its bound of 1 again
    assert slow.said == ["conflated", "conflated"] and hub.mode_counts()["conflated"] == 1


# -- the idle flush: an event that finds the flusher parked goes out in the publisher's greenlet --

def _parked_hub():
    import gevent

    hub, delivered = make_hub()
    flusher = gevent.spawn(hub.run)
    gevent.sleep(0)  # the flusher starts and parks, waiting for an event
    return hub, delivered, flusher


def test_an_event_published_while_the_hub_is_idle_is_written_before_publish_returns():
    hub, delivered, flusher = _parked_hub()
    try:
        client = FakeClient()
        hub.add(client)
        hub.publish(events("a"))
        assert client.frames == [(b"ws:1", 1)]  # no greenlet switch happened in between
        assert hub._pending == []
    finally:
        flusher.kill()


def test_time_a_flush_spends_descheduled_is_not_counted_against_the_share():
    import time

    class Descheduled(FakeClient):
        def deliver(self, frame, n_events):
            time.sleep(0.060)  # the worker off the CPU mid-flush: wall time, no CPU time
            super().deliver(frame, n_events)

    hub, delivered, flusher = _parked_hub()
    try:
        client = Descheduled()
        hub.add(client)
        hub.publish(events("a"))  # an idle flush: 60 ms of wall time, more than the share's credit
        hub.publish(events("a", first=2))
        assert client.frames == [(b"ws:1", 1), (b"ws:2", 1)]  # flushed at once too: no pacing delay
    finally:
        flusher.kill()


def test_an_event_published_while_the_flusher_paces_waits_for_the_flusher():
    import gevent

    hub, delivered, flusher = _parked_hub()
    try:
        client = FakeClient()
        hub.add(client)
        hub._pacer.flushed(start_s=float("inf"), cost_s=0.0)  # a flush "just now": pacing forbids another
        hub.publish(events("a"))
        assert client.frames == [] and [e.seq for e in hub._pending] == [1]
        hub._pacer.flushed(start_s=float("-inf"), cost_s=0.0)  # the flusher may go now
        with gevent.Timeout(2.0):
            while not client.frames:
                gevent.sleep(0.001)
        assert client.frames == [(b"ws:1", 1)] and hub._pending == []
    finally:
        flusher.kill()


def test_a_rated_group_fed_by_an_idle_flush_still_gets_its_release_from_the_flusher():
    import gevent

    hub, delivered, flusher = _parked_hub()
    try:
        rated = RatedClient(max_hz=20.0)  # one release per 50 ms
        hub.add(rated)
        gevent.sleep(0)  # the flusher parks again, now with a rated group (nothing held: no timer)
        hub.publish(events("a"))  # an idle flush: released at once, the first release
        hub._pacer.flushed(start_s=float("-inf"), cost_s=0.0)  # as if that flush were long ago
        hub.publish(events("a", first=2))  # an idle flush too: held, the interval has not passed
        assert rated.frames == [(b"ws:1", 1)] and hub._pending == []
        with gevent.Timeout(2.0):
            while len(rated.frames) < 2:
                gevent.sleep(0.005)
        assert rated.frames[1] == (b"ws:2", 1)
    finally:
        flusher.kill()


def test_a_client_slow_again_before_its_release_went_out_gets_that_release_s_values_again():
    hub, _ = make_hub()
    slow = SlowClient(hub)
    hub.add(slow)
    hub.flush(events("a", "b", "a", "b", "a"))  # conflated after its first frame
    hub.flush(events("a", "b", first=6))  # still behind: held
    slow.backlog = 0
    hub.flush(events("c", first=8))  # released: the newest of a, b, c through seq 8
    assert slow.frames[-1] == (b"ws:6,7,8", 3) and slow.carried[-1] == events("a", "b", "c", first=6)
    release = slow.carried[-1]
    hub.flush(events("a", first=9))  # live again
    # past its bound with the release and seq 9 still queued: both dropped, their events handed back
    hub.conflate_slow(slow, release + events("a", first=9))
    slow.backlog = 0
    hub.flush([])
    assert slow.frames[-1] == (b"ws:7,8,9+1", 3)  # b and c from the dropped release, a newer


def test_a_client_whose_release_went_out_turns_slow_from_what_came_after_it_only():
    hub, _ = make_hub()
    slow = SlowClient(hub)
    hub.add(slow)
    hub.flush(events("a", "b", "a", "b", "a"))
    hub.flush(events("a", "b", first=6))
    slow.backlog = 0
    hub.flush(events("c", first=8))  # released through seq 8
    hub.flush(events("d", first=9))
    hub.conflate_slow(slow, events("d", first=9))  # the release went out: only seq 9's frame was dropped
    slow.backlog = 0
    hub.flush([])
    assert slow.frames[-1] == (b"ws:9", 1)  # its values are not sent again


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_rate_s_interval_holds_between_one_client_s_writes_not_only_between_releases():
    """A release whose writes were slow (a client's socket, a large group) ended late; the next one,
    alone in a timer flush, must still reach each client an interval after the last."""
    clock = FakeClock()
    hub, _ = make_hub(clock)

    class Live(FakeClient):  # the live group: its writes take 7 ms of every flush
        def deliver(self, frame, n_events):
            super().deliver(frame, n_events)
            clock.t += 0.007

    class Timed(RatedClient):  # notes when each frame was written; the first write can be slow
        def __init__(self, cost_s):
            super().__init__(max_hz=2.0)
            self.at, self.cost_s = [], cost_s

        def deliver(self, frame, n_events):
            super().deliver(frame, n_events)
            self.at.append(clock.t)
            clock.t += self.cost_s
            self.cost_s = 0.0

    hub.add(Live())
    a, b = Timed(0.003), Timed(0.0)
    hub.add(a)
    hub.add(b)
    hub.flush(events("a"), now_s=clock.t)  # released: written 7 ms (and 10 ms) after the flush began
    clock.t = 0.1
    hub.flush(events("a", first=2), now_s=clock.t)  # held for the next release
    for ms in range(500, 531):  # the flusher's timer flushes, nothing new arriving
        clock.t = ms / 1000
        hub.flush([], now_s=clock.t)
    for c in (a, b):
        assert len(c.at) == 2
        assert c.at[1] - c.at[0] >= 0.5 - 1e-9, c.at


def test_a_release_is_written_before_the_live_clients_of_its_flush():
    """So a topic's last value waits an interval plus the release's own writes, not every live write."""
    clock = FakeClock()
    hub, _ = make_hub(clock)
    order = []

    class Live(FakeClient):  # 900 live clients' writes: 7 ms of every flush
        def deliver(self, frame, n_events):
            super().deliver(frame, n_events)
            order.append("live")
            clock.t += 0.007

    class Timed(RatedClient):
        def deliver(self, frame, n_events):
            super().deliver(frame, n_events)
            order.append("rated")
            self.at.append(clock.t)

    hub.add(Live())  # the live group is the older one
    rated = Timed(max_hz=2.0)
    rated.at = []
    hub.add(rated)
    hub.flush(events("a"), now_s=clock.t)
    assert order == ["rated", "live"]
    clock.t = 0.1
    hub.flush(events("a", first=2), now_s=clock.t)  # arrives 0.1 s in: held
    for ms in range(500, 521):
        clock.t = ms / 1000
        hub.flush([], now_s=clock.t)
    assert rated.at == [0.0, 0.5]


def test_a_slow_client_whose_newest_values_pass_its_bound_in_topics_is_closed_and_forgotten():
    """A feed with a new topic per event: one newest value per topic was kept for a stalled client without
    end (860 MB in 40 s, an audit). Past max_held topics it is closed as a slow consumer."""
    delivered = []
    hub = Hub(0, on_delivered=lambda kind, frames, n: delivered.append(n), clock=lambda: 0.0, max_held=5)

    class Stalled(SlowClient):
        gave_up = 0

        def held_too_many(self):
            self.gave_up += 1
            self.hub.remove(self)

    slow = Stalled(hub)
    hub.add(slow)
    hub.flush(events(*"abcde"))  # 5 > 4: conflated
    hub.flush(events(*"fghij", first=6))  # 5 topics held: at the bound
    assert slow.gave_up == 0 and hub.mode_counts()["conflated"] == 1
    hub.flush(events("k", first=11))  # a 6th
    assert slow.gave_up == 1 and hub.client_count == 0


def test_a_rated_client_alone_in_its_group_keeps_its_rate_after_a_slow_spell():
    """An outside check: a max_hz client with on_slow=conflate, alone in its group, went silent for good after
    its slow spell (and so did every client that joined its group later). Caught up, it rejoined its group
    inside a flush that had no rated group when it started, so the flush's start on the releases' clock was
    taken as 0 and its group's next release was scheduled clock-reading seconds ahead."""
    clock = FakeClock()
    clock.t = 5_000.0  # a perf_counter of a machine up for a while
    hub, _ = make_hub(clock)

    class RatedSlow(SlowClient):
        reading = False  # from its catch-up on it reads every frame at once

        def deliver(self, frame, n_events):
            self.frames.append((frame, n_events))
            self.backlog += 0 if self.reading else n_events
            if self.backlog > 2 and not self.hub.conflating(self):
                self.hub.conflate_slow(self)

    slow = RatedSlow(hub)
    slow.max_hz = 10.0
    hub.add(slow)
    hub.flush(events("a"), now_s=0.0)  # its first release, at once
    hub.flush(events("a", "b", "c", first=2), now_s=0.2)  # its second: 1 + 3 > 2 events, slow
    assert slow.said == ["conflated"] and hub.mode_counts() == {"live": 0, "rate": 0, "conflated": 1}
    slow.backlog, slow.reading = 0, True
    hub.flush(events("c", first=7), now_s=0.4)  # caught up: its newest values, live, back in its group
    assert slow.said == ["conflated", "live"]
    frames = len(slow.frames)
    for n in range(8):  # 2 s at 10 Hz, one event every 50 ms: a release every 100 ms or so
        hub.flush(events("a", first=8 + n), now_s=0.5 + 0.25 * n)
    assert len(slow.frames) - frames >= 7, slow.frames[frames:]


def test_a_slow_client_is_told_what_its_dropped_frames_conflated_counts_said():
    """An outside check: a max_hz client's frames dropped when it turned slow said `conflated` N (its rate's
    thinning); N was never told, and its counts came out short of `due - got` (by 18 in 1,095). The release
    tells it; the metric, which counted N when the rate thinned, does not count it again."""
    counted = []
    hub = Hub(0, on_delivered=lambda kind, frames, n: None, on_conflated=counted.append, clock=lambda: 0.0)
    slow = SlowClient(hub, patterns=("a", "b"))
    hub.add(slow)
    hub.flush(events("a"))
    hub.flush(events("x", "x", "x", first=2))  # not its topics: the hub's last seq is 4
    hub.conflate_slow(slow, events("a", "b", "a", first=2), untold=7)  # its dropped frames said 7 in all
    slow.backlog = 0
    hub.flush([])
    assert slow.frames[-1] == (b"ws:3,4+8", 2)  # a at 2 replaced (1), and the 7
    assert counted == [1]


# -- counts and order across joins and rate changes, checked against what each client was due --

class Recorder(RatedClient):
    """Keeps what it was sent as (seqs, conflated) instead of bytes."""

    def encode(self, events, conflated=0):
        return tuple(e.seq for e in events), conflated

    def deliver(self, frame, n_events):
        self.frames.append(frame)

    def seqs(self):
        return [s for seqs, _ in self.frames for s in seqs]

    def told(self):
        return sum(n for _, n in self.frames)


def test_a_client_joining_a_rate_mid_interval_is_told_only_the_events_after_its_snapshot_that_it_lost():
    """A client that joins a rate's group with a snapshot covering some of what the group's conflator holds
    or counted: its first release tells it the events after its snapshot that were replaced, not the group's
    count (the late path told the group's: over by what its snapshot covered)."""
    hub, _ = make_hub()
    old = Recorder(max_hz=1.0)
    hub.add(old)
    hub.flush(events("a"), now_s=0.0)  # released at once
    hub.flush(events("a", "a", "b", "a", first=2), now_s=0.1)  # held: a 5, b 4; 2 and 3 replaced
    new = Recorder(max_hz=1.0)
    new.after_seq = 5  # its snapshot has 1..5
    hub.add(new)
    hub.flush(events("a", "a", first=6), now_s=0.2)  # 5 and 6 replaced
    hub.flush([], now_s=1.1)
    assert old.frames[-1] == ((4, 7), 4)
    assert new.frames == [((7,), 1)]  # 6 was after its snapshot and replaced; 2, 3 and 5 were not its loss


@pytest.mark.parametrize("seed", range(40))
def test_every_event_a_rated_client_was_due_is_delivered_once_in_order_or_counted(seed):
    """A random run of batches, joins (each with a snapshot up to the hub's last seq), rate changes and
    leaves: for each client, every matching event after its snapshot is either delivered (once, in seq
    order) or counted in `conflated`, and each topic's newest event reaches it."""
    import random

    rnd = random.Random(seed)
    hub, _ = make_hub()
    topics = ["a", "b", "c", "d"]
    rates = [None, 1.0, 2.0, 5.0]
    sent: list = []
    clients: dict = {}  # client -> its snapshot's seq
    now, seq = 0.0, 0
    for _ in range(300):
        op = rnd.random()
        if op < 0.55:
            batch = [make_event(seq + i + 1, 0, rnd.choice(topics), {}) for i in range(rnd.randint(0, 6))]
            seq += len(batch)
            sent += batch
            now += rnd.choice([0.01, 0.05, 0.2, 0.6])
            hub.flush(batch, now_s=now)
        elif op < 0.75 or not clients:
            patterns = tuple(rnd.sample(topics, rnd.randint(1, 4))) if rnd.random() < 0.5 else ("*",)
            client = Recorder(patterns, max_hz=rnd.choice(rates))
            client.after_seq = hub.last_seq  # its snapshot: everything so far
            clients[client] = hub.last_seq
            hub.add(client)
        elif op < 0.95:
            client = rnd.choice(list(clients))
            hub.resubscribe(client, client.matcher.patterns, rnd.choice(rates))
        else:
            client = rnd.choice(list(clients))
            hub.remove(client)
            del clients[client]
    for _ in range(2):
        now += 10.0
        hub.flush([], now_s=now)
    for client, base in clients.items():
        due = [e for e in sent if e.seq > base and client.matcher(e.topic)]
        got = client.seqs()
        assert got == sorted(set(got)), "once and in seq order"
        assert set(got) <= {e.seq for e in due}
        assert len(got) + client.told() == len(due), (len(got), client.told(), len(due))
        newest = {e.topic: e.seq for e in due}
        assert set(newest.values()) <= set(got), "each topic's newest event"


class Timed(Recorder):
    """A Recorder that notes the time of each frame and the rate it had then."""

    def __init__(self, now, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.now, self.times = now, []

    def deliver(self, frame, n_events):
        super().deliver(frame, n_events)
        self.times.append((self.now[0], self.max_hz))


def _rated_gaps(client):
    """(seconds between two frames written while it had a rate, the rate of the later one)."""
    gaps, last = [], None
    for at, rate in client.times:
        if rate is None:
            last = None
            continue
        if last is not None:
            gaps.append((at - last, rate))
        last = at
    return gaps


def test_a_rate_holds_across_subscription_changes():
    """A client at max_hz=1 that changes its subscription every 100 ms while its topic is busy still gets at
    most one release a second (released at once on each change, it got 57 in 3 s), and others at its rate
    keep sharing one frame."""
    now = [0.0]
    hub, _ = make_hub()
    changer = Timed(now, ("a",), max_hz=1.0)
    steady = [Timed(now, ("a",), max_hz=1.0) for _ in range(3)]
    for c in (changer, *steady):
        hub.add(c)
    seq = 0
    for step in range(300):  # 3 s: an event of a every 10 ms, a change every 100 ms
        now[0] = step / 100
        seq += 1
        hub.flush(events("a", first=seq), now_s=now[0])
        if step % 10 == 5:
            hub.resubscribe(changer, ("a", "b") if step % 20 == 5 else ("a",))
    now[0] = 3.5
    hub.flush([], now_s=now[0])
    assert len(changer.times) <= 4, changer.times
    assert all(gap >= 1.0 for gap, _ in _rated_gaps(changer)), changer.times
    assert changer.seqs()[-1] == seq  # its topic's newest event reached it
    assert all(c.frames[-1] is steady[0].frames[-1] for c in steady)


@pytest.mark.parametrize("seed", range(40))
def test_every_rated_client_s_releases_are_an_interval_of_its_current_rate_apart_and_none_is_late(seed):
    """Random batches, changes of patterns and rate, at random times: a client's frames written while it had
    a rate are at least an interval of the later one's rate apart, and each topic's newest event reaches it
    within an interval of its rate (plus one flush step) when it arrived after the client's last change."""
    import random

    rnd = random.Random(seed)
    now = [0.0]
    hub, _ = make_hub()
    topics = ["a", "b", "c"]
    rates = [None, 1.0, 2.0, 5.0]
    clients = [Timed(now, tuple(rnd.sample(topics, rnd.randint(1, 3))), max_hz=rnd.choice(rates)) for _ in range(6)]
    changed_at = dict.fromkeys(clients, 0.0)
    for c in clients:
        hub.add(c)
    seq, arrived, newest, topic_of = 0, {}, {}, {}
    for _ in range(400):
        now[0] += rnd.choice([0.01, 0.03, 0.1])
        if rnd.random() < 0.15:
            c = rnd.choice(clients)
            patterns = tuple(rnd.sample(topics, rnd.randint(1, 3)))
            hub.resubscribe(c, patterns, rnd.choice(rates) if rnd.random() < 0.5 else c.max_hz)
            changed_at[c] = now[0]
            if c.max_hz is None:
                c.times.append((now[0], None))  # every event for a while: a rate after it starts afresh
        batch = [make_event(seq + i + 1, 0, rnd.choice(topics), {}) for i in range(rnd.randint(0, 3))]
        for e in batch:
            arrived[e.seq], newest[e.topic], topic_of[e.seq] = now[0], e.seq, e.topic
        seq += len(batch)
        hub.flush(batch, now_s=now[0])
        for c in clients:
            bound = 0.0 if c.max_hz is None else 1.0 / c.max_hz + 0.1
            got = {}
            for s in c.seqs():
                got[topic_of[s]] = s
            for topic, s in newest.items():
                if c.matcher(topic) and arrived[s] >= changed_at[c] and now[0] - arrived[s] > bound + 1e-9:
                    assert got.get(topic, 0) >= s, (topic, s, arrived[s], now[0], c.max_hz)
    for c in clients:
        for gap, rate in _rated_gaps(c):
            assert gap >= 1.0 / rate - 1e-9, (gap, rate, c.times)


def test_a_stray_rejoins_its_shared_group_once_it_holds_nothing_and_the_phases_allow():
    """A change that carries held values leaves the client in a group of its own; once it has released them
    and the shared group's next release is an interval after its last, it shares the group's frame again."""
    now = [0.0]
    hub, _ = make_hub()
    changer = Timed(now, ("a", "b"), max_hz=1.0)
    steady = Timed(now, ("a",), max_hz=1.0)
    hub.add(changer)
    hub.add(steady)
    seq = 0
    for step in range(300):
        now[0] = step / 100
        if step < 105 or step >= 150:  # a quiet spell in the middle
            seq += 1
            hub.flush(events("a", first=seq), now_s=now[0])
        else:
            hub.flush([], now_s=now[0])
        if step == 50:
            hub.resubscribe(changer, ("a",))  # the old rate holds a's newest: a stray
            assert hub._strays
    assert not hub._strays
    assert changer.frames[-1] is steady.frames[-1]
    assert all(gap >= 1.0 for gap, _ in _rated_gaps(changer)), changer.times
