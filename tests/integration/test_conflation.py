"""Delivery control (contract §12): max_hz with latest-value-wins, on_slow=conflate, snapshot=latest.

Rates are checked on what the client receives: per topic, no 0.9 s window
holds more than max_hz deliveries (the relay spaces a group's releases at least
1 / max_hz apart; 0.9 s instead of 1 s leaves room for the test's own read
jitter), the newest event of each topic always arrives, and everything is in
seq order. Without conflation a client here would get 40 events per topic per
second.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import defaultdict

import pytest
import requests
from support.clients import RawWsClient, upgrade_headers
from support.events import unique_sym
from support.waiting import wait_until

RELAY_ENV = {"WS_QUEUE_MAX_EVENTS": "300", "WS_QUEUE_MAX_BYTES": "262144"}
PER_TOPIC_HZ = 40


class Feeder:
    """Sends one element per topic every 1 / PER_TOPIC_HZ s from a thread, until stopped."""

    def __init__(self, upstream, topics: list[tuple[str, str]], pad: str = ""):
        self.upstream, self.topics, self.pad = upstream, topics, pad
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.upstream.emit([{"ev": ev, "sym": sym, "n": self.sent, "pad": self.pad} for ev, sym in self.topics],
                               batch=len(self.topics))
            self.sent += 1
            self._stop.wait(1 / PER_TOPIC_HZ)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __exit__(self, *exc) -> None:
        self.stop()


def topics_for(sym: str) -> list[tuple[str, str]]:
    return [("T", sym), ("Q", sym), ("T", sym + "X")]


def most_in_window(times: list[float], window_s: float) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def assert_rate(arrivals: dict[str, list[float]], max_hz: int) -> None:
    """Releases come >= 1 / max_hz apart, so no 0.9 s window holds more than max_hz of one topic."""
    for topic, times in arrivals.items():
        most = most_in_window(times, 0.9)
        assert most <= max_hz, f"{topic}: {most} deliveries within 0.9 s (at most {max_hz}): {times}"


def newest_per_topic(events: list[dict]) -> dict[str, int]:
    return {e["topic"]: e["seq"] for e in events}


def read_ws_frames(client, seconds: float) -> list[tuple[float, dict]]:
    """Every frame for `seconds`, with its arrival time."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = client._read(min(left, 0.5))
        except TimeoutError:
            continue
        out.append((time.monotonic(), frame))
    return out


def conflated_now(relay) -> int:
    return relay.health()["clients_by_mode"]["conflated"]


def stays_on_latest(relay, what: str, more_events: int = 300) -> None:
    """Wait until a stalled client is on its newest values, then until `more_events` more events came while
    it stays so (a client that reads nothing never catches up: dropping its backlog is not catching up)."""
    wait_until(lambda: conflated_now(relay) >= 1, 30, what)
    target = relay_last_seq(relay) + more_events
    wait_until(lambda: relay_last_seq(relay) >= target, 30, f"{more_events} more events while {what}")
    assert conflated_now(relay) >= 1, "a client that reads nothing went live again"


def relay_last_seq(relay) -> int:
    return relay.health()["last_seq"]


# -- max_hz ----------------------------------------------------------------------------------


def test_ws_max_hz_delivers_at_most_that_many_events_per_topic_the_newest_last_in_seq_order(relay, upstream, ws):
    sym = unique_sym()
    pattern = f"T.{sym}*,Q.{sym}"
    rated = ws(relay, topics=pattern, snapshot=0, max_hz=2)
    live = ws(relay, topics=pattern, snapshot=0)
    rated.read_snapshot()
    live.read_snapshot()
    with Feeder(upstream, topics_for(sym)):
        frames = read_ws_frames(rated, 3.0)
    last = relay_last_seq(relay)
    live.wait_for_seq(last)
    rated.wait_until(lambda: set(newest_per_topic(rated.events).values()) == set(newest_per_topic(live.events).values()),
                     2.0, "the newest event of every topic")

    arrivals: dict[str, list[float]] = defaultdict(list)
    for at, frame in frames:
        for event in frame.get("events", []):
            arrivals[event["topic"]].append(at)
    assert len(arrivals) == 3
    assert_rate(arrivals, 2)
    seqs = [e["seq"] for e in rated.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len(live.events) > 3 * 40  # the feed really was fast
    assert len(rated.events) <= 3 * 2 * 4 + 3
    thinned = [f for _, f in frames if f["type"] == "events" and f.get("conflated")]
    assert thinned and sum(f.get("conflated", 0) for f in rated.frames if f["type"] == "events") + len(rated.events) == len(
        live.events)  # every event the live client got is either delivered or counted as replaced


def test_sse_max_hz_thins_the_stream_and_announces_the_replaced_count(relay, upstream, sse, ws):
    sym = unique_sym()
    pattern = f"T.{sym}*,Q.{sym}"
    live = ws(relay, topics=pattern, snapshot=0)
    live.read_snapshot()
    stream = sse(relay, topics=pattern, snapshot=0, max_hz=2)
    assert stream.status == 200
    arrivals: dict[str, list[float]] = defaultdict(list)
    messages = []
    with Feeder(upstream, topics_for(sym)):
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # a release comes every 0.5 s while the feed runs
            message = stream.next_message(5.0)
            messages.append(message)
            if message.event == "event":
                arrivals[message.json()["topic"]].append(time.monotonic())
    live.wait_for_seq(relay_last_seq(relay))
    newest = newest_per_topic(live.events)
    got = newest_per_topic([m.json() for m in messages if m.event == "event"])
    while got != newest:
        message = stream.next_message(2.0)
        messages.append(message)
        if message.event == "event":
            got[message.json()["topic"]] = message.json()["seq"]

    assert len(arrivals) == 3
    assert_rate(arrivals, 2)
    seqs = [int(m.id) for m in messages if m.event == "event"]  # id: <seq>
    assert seqs == sorted(seqs)
    conflated = [m.json()["conflated"] for m in messages if m.event == "conflated"]
    assert conflated and all(n > 0 for n in conflated)
    assert sum(conflated) + len(seqs) == len(live.events)
    # a `conflated` message comes right before the events it speaks for
    kinds = [m.event for m in messages]
    assert all(kinds[i + 1] == "event" for i, k in enumerate(kinds[:-1]) if k == "conflated")


def test_subscribe_sets_changes_and_clears_the_rate(relay, upstream, ws):
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    client.send_json({"action": "subscribe", "topics": [f"Q.{sym}"], "max_hz": 1})
    assert client.next_frame("subscribed") == {"type": "subscribed", "topics": [f"T.{sym}", f"Q.{sym}"], "max_hz": 1}
    with Feeder(upstream, [("T", sym)]):
        frames = read_ws_frames(client, 2.5)
    n_rated = sum(len(f.get("events", [])) for _, f in frames)
    assert 1 <= n_rated <= 4  # 1 Hz for 2.5 s, against ~100 sent

    client.send_json({"action": "subscribe", "topics": [], "max_hz": None})
    assert client.next_frame("subscribed")["max_hz"] is None
    before = len(client.events)
    first = relay_last_seq(relay) + 1
    with Feeder(upstream, [("T", sym)]) as feeder:
        wait_until(lambda: feeder.sent >= 20, 10, "20 events sent")
    last = relay_last_seq(relay)
    client.wait_for_seq(last)
    assert [e["seq"] for e in client.events[before:] if e["seq"] >= first] == list(range(first, last + 1))

    client.send_json({"action": "subscribe", "topics": [], "max_hz": 0.5})
    assert client.next_frame("subscribed")["max_hz"] == 0.5
    client.send_json({"action": "subscribe", "topics": [f"T.{sym}"]})  # no max_hz: the rate stays
    assert client.next_frame("subscribed")["max_hz"] == 0.5


def test_a_change_of_rate_sends_no_event_twice_and_loses_no_topic_s_newest_value(relay, upstream, ws):
    """Moving into a rate's group that holds events it already got live sent them again; leaving a rate
    while it held a topic's newest value lost that value once the topic went quiet."""
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    rated = ws(relay, topics=f"T.{sym}", snapshot=0, max_hz=0.5)  # its group holds what it has not released
    observer = ws(relay, topics=f"T.{sym}", snapshot=0)
    for c in (client, rated, observer):
        c.read_snapshot()
    with Feeder(upstream, [("T", sym)]) as feeder:
        wait_until(lambda: feeder.sent >= 30, 10, "30 events sent")
    live_newest = relay_last_seq(relay)
    for c in (client, observer):
        c.wait_for_seq(live_newest)  # the client has it live; the rate's group still holds it (0.5 Hz)
    client.send_json({"action": "subscribe", "topics": [], "max_hz": 0.5})  # into the rated group
    assert client.next_frame("subscribed")["max_hz"] == 0.5
    rated.wait_for_seq(live_newest)  # the group's release: before the fix, the client got `newest` again

    # the group released just now: this burst's events are held for two seconds
    with Feeder(upstream, [("T", sym)]) as feeder:
        wait_until(lambda: feeder.sent >= 10, 10, "10 events sent")
    client.send_json({"action": "subscribe", "topics": [], "max_hz": None})  # the rate holds the newest
    assert client.next_frame("subscribed")["max_hz"] is None
    newest = relay_last_seq(relay)
    observer.wait_for_seq(newest)
    client.wait_until(lambda: client.events[-1]["seq"] == observer.events[-1]["seq"], 5,
                      "the newest value the rate held, with the topic quiet")
    seqs = [e["seq"] for e in client.events]
    assert seqs.count(live_newest) == 1, "an event delivered live was sent again by the rate"
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)


def test_a_rate_holds_across_subscription_changes(relay, upstream, ws):
    """A client at max_hz=1 that subscribes and unsubscribes every 100 ms while its topic is busy: each change
    released what the rate held at once (57 releases of one topic in 3 s); the rate now holds across them,
    and the topic's newest value still reaches it."""
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0, max_hz=1)
    observer = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    observer.read_snapshot()
    arrivals: list[float] = []
    with Feeder(upstream, [("T", sym)]):
        deadline = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < deadline:
            n += 1
            action = "subscribe" if n % 2 else "unsubscribe"
            client.send_json({"action": action, "topics": [f"Q.{sym}"]})
            for at, frame in read_ws_frames(client, 0.1):
                arrivals += [at for e in frame.get("events", []) if e["topic"] == f"T.{sym}"]
    assert n >= 20
    assert arrivals and most_in_window(arrivals, 0.9) <= 1, arrivals
    assert len(arrivals) <= 4, arrivals
    newest = relay_last_seq(relay)
    observer.wait_for_seq(newest)
    client.wait_until(lambda: client.events and client.events[-1]["seq"] == observer.events[-1]["seq"], 3,
                      "the topic's newest value after the changes")


@pytest.mark.parametrize("bad", [0, -1, "abc", 1e9, True, [2]])
def test_a_bad_max_hz_on_subscribe_is_an_error_frame_and_the_connection_stays(relay, ws, bad):
    client = ws(relay, snapshot=0, max_hz=5)
    client.read_snapshot()
    client.send_json({"action": "subscribe", "topics": ["X.Y"], "max_hz": bad})
    assert "max_hz" in client.next_frame("error")["message"]
    client.send_json({"action": "subscribe", "topics": ["*"]})
    assert client.next_frame("subscribed") == {"type": "subscribed", "topics": ["*"], "max_hz": 5}


@pytest.mark.parametrize("path", ["/ws", "/sse"])
@pytest.mark.parametrize("query, named", [
    ("max_hz=0", "max_hz"), ("max_hz=-1", "max_hz"), ("max_hz=abc", "max_hz"), ("max_hz=1e9", "max_hz"),
    ("on_slow=maybe", "on_slow"), ("snapshot=newest", "snapshot"),
])
def test_bad_delivery_parameters_are_refused_before_the_stream_starts(relay, path, query, named):
    headers = upgrade_headers() if path == "/ws" else {"Accept": "text/event-stream"}
    response = requests.get(f"{relay.url}{path}?{query}", headers=headers, timeout=10)
    assert response.status_code == 400
    assert named in response.json()["error"]


# -- snapshot=latest and /cache/latest ---------------------------------------------------------------


def test_snapshot_latest_and_cache_latest_hold_the_newest_event_of_each_topic(relay, upstream, ws, sse):
    sym = unique_sym()
    elements = [{"ev": ev, "sym": s, "n": n} for n in range(3) for ev, s in topics_for(sym)]
    elements.append({"ev": "T", "sym": sym, "n": 99})
    upstream.emit(elements, batch=len(elements))
    last = relay.health()["last_seq"]
    wait_until(lambda: relay_last_seq(relay) >= last, 10, "events sequenced")
    newest = relay.get("/cache/recent", params={"topics": f"T.{sym}*,Q.{sym}", "limit": 1000}).json()["events"]
    want = sorted(newest_per_topic(newest).values())
    assert len(want) == 3

    cached = relay.get("/cache/latest", params={"topics": f"T.{sym}*,Q.{sym}"})
    assert cached.status_code == 200
    assert [e["seq"] for e in cached.json()["events"]] == want
    assert cached.json()["events"][-1]["data"]["n"] == 99
    assert [e["seq"] for e in relay.get("/cache/latest", params={"topics": f"Q.{sym}"}).json()["events"]] == want[:1]
    assert relay.get("/cache/latest", params={"topics": f"T.{sym}*", "limit": 1}).json()["events"][0]["seq"] == want[-1]

    client = ws(relay, topics=f"T.{sym}*,Q.{sym}", snapshot="latest")
    assert [e["seq"] for e in client.read_snapshot()["events"]] == want
    stream = sse(relay, topics=f"T.{sym}*,Q.{sym}", snapshot="latest")
    assert [e["seq"] for e in stream.events(3)] == want
    assert relay.get("/cache/latest", params={"limit": 0}).status_code == 400


# -- on_slow=conflate --------------------------------------------------------------------------


def test_a_conflating_slow_client_stays_connected_gets_newest_values_then_goes_live(relay, upstream, ws):
    sym = unique_sym()
    pattern = f"T.{sym}*,Q.{sym}"
    reader = ws(relay, topics=pattern, snapshot=0)
    reader.read_snapshot()
    stalled = RawWsClient("127.0.0.1", relay.port, relay.target("/ws", topics=pattern, snapshot=0, on_slow="conflate"))
    try:
        first = relay_last_seq(relay) + 1
        connected = relay.health()["clients"]
        with Feeder(upstream, topics_for(sym), pad="x" * 2048):
            stays_on_latest(relay, "the stalled client's backlog to be conflated")
        last = relay_last_seq(relay)
        assert relay.health()["clients"] == connected  # nobody was closed

        newest = newest_per_topic([e for e in reader.wait_for_seq(last) if e["seq"] <= last])

        def caught_up(texts: list[str]) -> bool:
            frames = [json.loads(t) for t in texts]
            got = newest_per_topic([e for f in frames if f["type"] == "events" for e in f["events"]])
            modes = [f["mode"] for f in frames if f["type"] == "slow"]
            return got == newest and bool(modes) and modes[-1] == "live"

        seen = stalled.read_until(caught_up, timeout_s=60)
        frames = [json.loads(t) for t in seen.texts]
        assert not seen.got_close_frame and all(f["type"] != "closing" for f in frames)
        modes = [f["mode"] for f in frames if f["type"] == "slow"]
        assert modes[0] == "conflated" and modes == ["conflated", "live"] * (len(modes) // 2)
        # releases of newest values say how many events they replaced
        assert any(f["type"] == "events" and f.get("conflated", 0) > 0 for f in frames)
        seqs = [e["seq"] for f in frames if f["type"] == "events" for e in f["events"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert len(seqs) < last - first  # it was not sent everything: its backlog was conflated

        # live again: every new event, in order
        after = relay_last_seq(relay)
        upstream.emit([{"ev": "T", "sym": sym, "n": n} for n in range(5)], batch=1)
        more = stalled.read_until(
            lambda texts: any(f'"seq":{after + 5},' in t for t in texts), timeout_s=10)
        fresh = [e["seq"] for t in more.texts for e in json.loads(t).get("events", [])]
        assert fresh == list(range(after + 1, after + 6))
        assert relay.health()["clients_by_mode"]["conflated"] == 0
    finally:
        stalled.close()
    # the reader got every event, in order, and was never held up into a close
    reader.wait_for_seq(after + 5)
    assert [e["seq"] for e in reader.events if e["seq"] >= first] == list(range(first, after + 6))
    assert not reader.closed


def test_a_conflating_slow_sse_client_gets_slow_messages_and_the_newest_values_and_stays(relay, upstream, ws):
    sym = unique_sym()
    pattern = f"T.{sym}*,Q.{sym}"
    reader = ws(relay, topics=pattern, snapshot=0)
    reader.read_snapshot()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    stalled.connect(("127.0.0.1", relay.port))
    stalled.sendall((f"GET {relay.target('/sse', topics=pattern, snapshot=0, on_slow='conflate')} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").encode())
    try:
        with Feeder(upstream, topics_for(sym), pad="x" * 2048):
            stays_on_latest(relay, "the stalled stream to be conflated")
        last = relay_last_seq(relay)
        newest = newest_per_topic([e for e in reader.wait_for_seq(last) if e["seq"] <= last])

        received = b""
        deadline = time.monotonic() + 60
        messages: list[tuple[str, dict]] = []
        while True:
            messages = [(m.group(1).decode(), json.loads(m.group(2))) for m in
                        re.finditer(rb"event: (\w+)\ndata: (.*)\n\n", received)]
            got = newest_per_topic([data for kind, data in messages if kind == "event"])
            modes = [data["mode"] for kind, data in messages if kind == "slow"]
            if got == newest and modes and modes[-1] == "live":
                break
            assert time.monotonic() < deadline, f"not caught up: modes {modes}, newest {got} != {newest}"
            stalled.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = stalled.recv(65536)
            assert chunk, "the relay ended the stream"
            received += chunk
        kinds = [kind for kind, _ in messages]
        assert "closing" not in kinds and modes[0] == "conflated"
        assert any(kind == "conflated" and data["conflated"] > 0 for kind, data in messages)
        seqs = [data["seq"] for kind, data in messages if kind == "event"]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        stalled.close()
    assert not reader.closed
