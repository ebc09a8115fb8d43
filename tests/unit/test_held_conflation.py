"""§12 on_slow=conflate for a client past its bound before its snapshot is out (a /ws resume waiting for the
store, an /sse head not out yet): not closed, as §3 would; its held frames are dropped and, with the snapshot,
it gets `slow` conflated, the newest value of each topic they held (kept from each frame's own events as it
came, `hub.delivering`), `slow` live. Before, it was closed (docs/api.md said so; the contract does not)."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import pytest

from handlers.cache import EventCache
from handlers.events import make_event
from handlers.topics import compile_patterns
from webapp.hub import Hub as RealHub
from webapp.routes.sse import SseClient
from webapp.routes.ws import WsClient
from webapp.wire import WireSocket, limit_send_buffer

NOW = 1_000_000
BOUND = 5  # events


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class Hub:
    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.removed: list = []
        self.delivering: tuple[list, int] = ([], 0)

    def conflating(self, client) -> bool:
        return False

    def remove(self, client) -> None:
        self.removed.append(client)


def runtime(cache: EventCache, last_seq: int):
    return SimpleNamespace(settings=SimpleNamespace(ws_queue_max_events=BOUND, ws_queue_max_bytes=1 << 20),
                           cache=cache, hub=Hub(last_seq), now_ms=lambda: NOW, stream_epoch="E",
                           metrics=SimpleNamespace(conflated_events=Counter(),
                                                   slow_consumers=SimpleNamespace(labels=lambda kind: Counter()),
                                                   queue_drops=SimpleNamespace(labels=lambda kind: Counter())))


def cached(n: int) -> EventCache:
    """Seqs 1..n over three topics (A, B, C in turn)."""
    cache = EventCache(1_000, 3_600)
    cache.add([make_event(seq, NOW, "T." + "ABC"[seq % 3], {"n": seq}) for seq in range(1, n + 1)], NOW)
    return cache


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def held_past_the_bound(client, cache: EventCache, upto: int = 28) -> None:
    """The snapshot covers seqs to 10; 11..`upto` come while it waits, one flush and frame each (the bound
    is 5). Like the hub, a flush's events are cached before the client gets them."""
    client.after_seq = 10
    for seq in range(11, upto + 1):
        deliver(client, [cache.get(seq, NOW)], seq)


def deliver(client, events: list, last_seq: int, thinned: int = 0) -> None:
    """What the hub does: a frame of `events` (its rate thinned `thinned` out of them) after a flush up to
    `last_seq`."""
    client.rt.hub.last_seq = last_seq
    client.rt.hub.delivering = (events, thinned)
    client.deliver(client.encode(events, thinned), len(events))


def received(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    data = b""
    try:
        while chunk := peer.recv(1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    return data


def ws_messages(data: bytes) -> list[dict]:
    """The JSON text of server frames (unmasked)."""
    out = []
    while data:
        size, at = data[1] & 0x7F, 2
        if size == 126:
            size, at = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, at = int.from_bytes(data[2:10], "big"), 10
        out.append(json.loads(data[at:at + size]))
        data = data[at + size:]
    return out


def test_a_ws_client_past_its_bound_while_its_resume_waits_gets_newest_values_after_the_snapshot_not_a_close(pair):
    a, b = pair
    cache = cached(30)
    rt = runtime(cache, last_seq=28)  # 29 and 30 are cached but not yet flushed: the next flush brings them
    client = WsClient(None, WireSocket(a), compile_patterns(["T.*"]), rt, on_slow="conflate")
    client.hold_live()
    held_past_the_bound(client, cache)
    assert not client.closed and rt.hub.removed == []
    assert client.held == [] and client.held_latest is not None  # dropped at the bound, newest kept instead
    client.send(b'{"type":"snapshot"}')
    client.release()
    messages = ws_messages(received(b))
    assert [m["type"] for m in messages] == ["snapshot", "slow", "events", "slow"]
    assert messages[1]["mode"] == "conflated" and messages[3]["mode"] == "live"
    release = messages[2]
    assert [e["seq"] for e in release["events"]] == [26, 27, 28]  # the newest of each topic, up to 28
    assert release["conflated"] == 18 - 3 and rt.metrics.conflated_events.value == 15
    assert client.held_latest is None and client.held is None  # live again
    assert client.after_seq == 28  # a rate's group still holding 11..28 cannot send them again


def test_a_ws_client_that_asked_to_be_closed_when_slow_still_is(pair):
    cache = cached(30)
    rt = runtime(cache, last_seq=28)
    closed = []
    ws = SimpleNamespace(close=lambda reason, message: closed.append(reason))
    client = WsClient(ws, WireSocket(pair[0]), compile_patterns(["T.*"]), rt)  # on_slow=close
    client.hold_live()
    held_past_the_bound(client, cache)
    assert client.closed and rt.hub.removed == [client] and closed == [1013]


def test_an_sse_client_past_its_bound_before_its_head_goes_out_gets_newest_values_after_the_snapshot(pair):
    cache = cached(30)
    rt = runtime(cache, last_seq=28)
    client = SseClient(WireSocket(pair[0]), rt, compile_patterns(["T.*"]), on_slow="conflate")
    held_past_the_bound(client, cache)
    assert not client.closed and client.pending == [] and client.held_latest is not None
    parts = client.waited(client.pending)
    body = b"".join(parts).decode()
    assert body.index('"mode":"conflated"') < body.index("event: conflated") < body.index('"mode":"live"')
    assert [json.loads(line[6:])["seq"] for line in body.splitlines()
            if line.startswith("data: {\"seq\"")] == [26, 27, 28]
    assert "data: {\"conflated\":15}" in body
    assert client.after_seq == 28 and not client.carried  # the release went with the head, not as a frame


def test_a_topic_s_only_event_during_a_hold_longer_than_the_cache_still_reaches_the_client(pair):
    """An outside check: a topic's one event during a long resume was gone from the cache when the snapshot
    went out, and the client never got it (nor any word of it). Its newest value is kept from the flush on."""
    cache = EventCache(12, 3_600)
    cache.add([make_event(seq, NOW, "T.A", {"n": seq}) for seq in range(1, 11)], NOW)
    rt = runtime(cache, last_seq=10)
    client = WsClient(None, WireSocket(pair[0]), compile_patterns(["T.*"]), rt, on_slow="conflate")
    client.hold_live()
    client.after_seq = 10
    for seq in range(11, 60):
        cache.add([make_event(seq, NOW, "T.RARE" if seq == 11 else "T." + "ABC"[seq % 3], {"n": seq})], NOW)
        deliver(client, [cache.get(seq, NOW)], seq)
    assert cache.get(11, NOW) is None  # long gone from the cache
    events, conflated = client.newest_held()
    assert [(e.seq, e.topic) for e in events] == [(11, "T.RARE"), (57, "T.A"), (58, "T.B"), (59, "T.C")]
    assert conflated == 49 - 4


def test_a_rate_s_releases_past_the_bound_after_the_cache_lost_their_first_events_lose_no_topic(pair):
    """An outside check (max_hz=2 with on_slow=conflate, a resume from the store): the releases are small, so
    the bound was passed long after the hold began; read back from the cache then, a topic whose only event
    came in an early release was gone, and the `conflated` count missed what the rate had thinned. Each
    frame's own events are kept now, and its thinned count with them."""
    cache = EventCache(12, 3_600)
    rt = runtime(cache, last_seq=10)
    client = WsClient(None, WireSocket(pair[0]), compile_patterns(["T.*"]), rt, max_hz=2, on_slow="conflate")
    client.hold_live()
    client.after_seq = 10
    seq = 10
    for release in range(8):  # each release: the newest of 10 events of topics A and B, and once RARE
        batch = [make_event(seq + i, NOW, "T.RARE" if release == 0 and i == 1 else "T." + "AB"[i % 2], {"n": i})
                 for i in range(1, 11)]
        seq += 10
        cache.add(batch, NOW)
        newest = sorted({e.topic: e for e in batch}.values(), key=lambda e: e.seq)
        deliver(client, newest, seq, thinned=len(batch) - len(newest))
    assert cache.get(11, NOW) is None and client.held_dropped  # the bound passed after the cache lost seq 11
    events, conflated = client.newest_held()
    assert [(e.seq, e.topic) for e in events] == [(11, "T.RARE"), (89, "T.B"), (90, "T.A")]
    assert conflated == 80 - 3  # every event it was due, but the three it gets
    assert rt.metrics.conflated_events.value == 3 + 2 * 7 - 3  # of the frames' 17; the rate's thinning is the hub's
    assert client.after_seq == 90


def test_the_hub_tells_a_held_client_each_frame_s_events_on_every_path(pair):
    """The same through the real hub: a rate's releases (`_release`), and a release that straddles the
    snapshot (`_send`'s late path: only the events after it) carry their own events to `hub.delivering`."""
    cache = EventCache(12, 3_600)
    rt = runtime(cache, last_seq=10)
    rt.hub = hub = RealHub(0, lambda kind, frames, events: None, clock=lambda: 0.0, max_held=BOUND)
    client = WsClient(None, WireSocket(pair[0]), compile_patterns(["T.*"]), rt, max_hz=2, on_slow="conflate")
    client.after_seq = 19  # its snapshot covers the first batch but 20: RARE's 13 among them
    client.hold_live()
    hub.add(client)
    seq, now = 10, 100.0
    for release in range(8):
        rare = {0: "T.RARE", 1: "T.ONCE"}.get(release) if release < 2 else None
        batch = [make_event(seq + i, NOW, rare if rare and i == 3 else "T." + "AB"[i % 2], {"n": i})
                 for i in range(1, 11)]
        seq += 10
        cache.add(batch, NOW)
        hub.flush(batch, now)
        now += 0.5
    assert cache.get(23, NOW) is None and client.held_dropped
    events, conflated = client.newest_held()
    # RARE's event was in its snapshot: not again; ONCE's only event, long gone from the cache: kept
    assert [(e.seq, e.topic) for e in events] == [(23, "T.ONCE"), (89, "T.B"), (90, "T.A")]
    # the first release's thinned count is its own: of batch 1 only 20 came after its snapshot, and went
    # out (the group's 7 were all events the snapshot had); then 7 and 8 a release; 13 replaced of the 16
    # events the frames carried
    assert conflated == 0 + 7 + 6 * 8 + 13


def test_a_live_client_of_quiet_topics_turning_slow_keeps_a_topic_its_dropped_frames_reach_back_to(pair):
    """The live path (conflate_instead): a client of a few quiet topics has frames queued that reach back
    further than the cache; read back from the cache when it turned slow, a topic whose only event was in
    a dropped frame was lost. The frames' own events are handed to the hub now."""
    import gevent

    a, b = pair
    cache = EventCache(12, 3_600)
    rt = runtime(cache, last_seq=0)
    rt.hub = hub = RealHub(0, lambda kind, frames, events: None, clock=lambda: 0.0, max_held=BOUND)
    a.setblocking(False)
    limit_send_buffer(a)
    client = WsClient(None, WireSocket(a), compile_patterns(["X.*"]), rt, on_slow="conflate")
    hub.add(client)
    client.send(b'{"type":"pad","x":"%s"}' % (b"r" * 200_000))  # unread by the peer: what follows queues
    seq = 0
    for n in range(8):  # 20 events a flush, one of them the client's: X.RARE first, then X.A
        batch = [make_event(seq + i, NOW, ("X.RARE" if n == 0 else "X.A") if i == 20 else "T.B", {"n": n})
                 for i in range(1, 21)]
        seq += 20
        cache.add(batch, NOW)
        hub.flush(batch)
    assert cache.get(20, NOW) is None and hub.conflating(client)  # slow long after the cache lost seq 20
    data = b""
    with gevent.Timeout(5):
        while not client.wire.has_room():
            data += received(b)
            gevent.sleep(0.01)
    hub.flush([])  # caught up: its newest values go out
    gevent.sleep(0.01)
    data += received(b)
    release = [m for m in ws_messages(data) if m["type"] == "events" and m.get("conflated")]
    assert [(e["seq"], e["topic"]) for e in release[0]["events"]] == [(20, "X.RARE"), (160, "X.A")]
