"""The hub builds each batch's frame once per subscription and wire format, and hands the same bytes to every client."""

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


def make_hub():
    delivered = []
    return Hub(0, on_delivered=lambda kind, frames, n: delivered.append((kind, frames, n))), delivered


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
