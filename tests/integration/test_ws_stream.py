"""/ws: the snapshot, live events, topic filtering, client actions and fan-out to many clients
(contract §2, §3, §10)."""

from __future__ import annotations

import base64
import threading
import time

from support.clients import WsClient
from support.events import data_of, feed, seqs_of, trades, unique_sym
from support.upstream import frames_of

RELAY_ENV: dict[str, str] = {}  # the defaults: TOPIC_FIELDS=ev,sym, CACHE_MAX_ITEMS=10000, ...


# -- events (§2) --------------------------------------------------------------


def test_an_event_carries_seq_ts_topic_and_the_element_unchanged(relay, upstream, ws):
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    element = {"ev": "T", "sym": sym, "p": 191.2, "s": 100, "t": 1764124800120, "c": [14, 41], "x": None}
    before_ms = int(time.time() * 1000)
    (seq,) = feed(relay, upstream, [element], batch=None)
    after_ms = int(time.time() * 1000)

    (event,) = client.wait_for_events(1)

    assert event["seq"] == seq
    assert event["topic"] == f"T.{sym}"
    assert event["data"] == element
    assert isinstance(event["ts"], int) and before_ms - 1000 <= event["ts"] <= after_ms + 1000
    assert "enrichment" not in event  # no ENRICH_SQL, so nothing produced
    assert not event.get("raw")


def test_topic_is_the_present_topic_fields_joined_or_default(relay, upstream, ws):
    sym = unique_sym()
    client = ws(relay, snapshot=0)
    client.read_snapshot()
    elements = [
        {"ev": "Q", "sym": sym},
        {"sym": sym},  # no ev: only the fields that are present
        {"ev": "status", "message": sym},
        {"unrelated": sym},
        7,  # not an object: data is the value, topic default
        f"scalar-{sym}",
        [sym],
    ]
    seqs = feed(relay, upstream, elements, batch=len(elements))  # one array frame

    client.wait_for_seq(seqs[-1])

    got = [e for e in client.events if e["seq"] in seqs]
    assert seqs_of(got) == seqs
    assert data_of(got) == elements
    assert [e["topic"] for e in got] == [f"Q.{sym}", sym, "status", "default", "default", "default", "default"]


def test_a_bare_json_scalar_frame_is_one_event(relay, upstream, ws):
    client = ws(relay, topics="default", snapshot=0)
    client.read_snapshot()
    (seq,) = feed(relay, upstream, ['"just a string"'], batch=None)

    (event,) = client.wait_for_events(1)

    assert (event["seq"], event["data"], event["topic"]) == (seq, "just a string", "default")
    assert not event.get("raw")


def test_non_json_and_binary_frames_become_raw_events_counted_as_parse_errors(relay, upstream, ws):
    client = ws(relay, topics="default", snapshot=0)
    client.read_snapshot()
    parse_errors_before = relay.health()["upstream"]["parse_errors"]
    blob = bytes([0, 1, 2, 250, 255]) + unique_sym().encode()
    text = f"hello, not json {unique_sym()}"

    seqs = feed(relay, upstream, [text, blob], batch=None)

    events = client.wait_for_events(2)
    assert seqs_of(events) == seqs
    assert events[0]["data"] == text and events[0]["raw"] is True
    assert events[1]["data"] == base64.b64encode(blob).decode() and events[1]["raw"] is True
    assert all(e["topic"] == "default" for e in events)
    assert relay.health()["upstream"]["parse_errors"] == parse_errors_before + 2


# -- snapshot (§3) ------------------------------------------------------------


def test_snapshot_holds_the_50_most_recent_matching_events_then_live_events_follow(relay, upstream, ws):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 60, sym))

    client = ws(relay, topics=f"T.{sym}")
    snapshot = client.read_snapshot()

    assert snapshot["recovered"] is True
    assert isinstance(snapshot["epoch"], str) and snapshot["epoch"] == relay.health()["epoch"]
    assert snapshot["last_seq"] >= seqs[-1]
    assert seqs_of(snapshot["events"]) == seqs[10:]
    assert data_of(snapshot["events"]) == trades(10, 60, sym)
    assert {e["topic"] for e in snapshot["events"]} == {f"T.{sym}"}

    live = feed(relay, upstream, trades(60, 65, sym))
    events = client.wait_for_events(55)
    assert live[0] > snapshot["last_seq"]
    assert seqs_of(events) == seqs[10:] + live
    assert data_of(events[50:]) == trades(60, 65, sym)


def test_snapshot_size_follows_the_snapshot_parameter(relay, upstream, ws):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 20, sym))

    none = ws(relay, topics=f"T.{sym}", snapshot=0)
    five = ws(relay, topics=f"T.{sym}", snapshot=5)
    empty_snapshot = none.read_snapshot()
    five_snapshot = five.read_snapshot()

    assert empty_snapshot["events"] == [] and empty_snapshot["recovered"] is True
    assert empty_snapshot["last_seq"] >= seqs[-1]
    assert seqs_of(five_snapshot["events"]) == seqs[-5:]

    live = feed(relay, upstream, trades(20, 23, sym))
    assert seqs_of(none.wait_for_events(3)) == live
    assert seqs_of(five.wait_for_events(8)) == seqs[-5:] + live


def test_snapshot_is_filtered_by_topics(relay, upstream, ws):
    a, b = unique_sym(), unique_sym()
    interleaved = [item for pair in zip(trades(0, 30, a), trades(0, 30, b), strict=True) for item in pair]
    seqs = feed(relay, upstream, interleaved)

    only_b = ws(relay, topics=f"T.{b}").read_snapshot()
    both = ws(relay, topics=f"T.{a},T.{b}").read_snapshot()

    assert data_of(only_b["events"]) == trades(0, 30, b)
    assert seqs_of(only_b["events"]) == seqs[1::2]
    assert seqs_of(both["events"]) == seqs[-50:]


# -- topics and actions (§3, §10) -------------------------------------------


def test_topics_select_exact_topics_prefixes_and_everything(relay, upstream, ws):
    a, b = unique_sym(), unique_sym()
    subscriptions = {
        "exact": f"T.{a}",
        "prefix": "T.*",
        "star": "*",
        "several": f"Q.{b},T.{a}",
        "prefix_of_other_event": "TX.*",
    }
    clients = {name: ws(relay, topics=topics, snapshot=0) for name, topics in subscriptions.items()}
    clients["no_topics_parameter"] = ws(relay, snapshot=0)
    for client in clients.values():
        client.read_snapshot()
    elements = [
        {"ev": "T", "sym": a, "n": 0},
        {"ev": "Q", "sym": a, "n": 1},
        {"ev": "T", "sym": b, "n": 2},
        {"ev": "Q", "sym": b, "n": 3},
        {"ev": "TX", "sym": a, "n": 4},  # topic TX.a: "T.*" is the prefix "T.", not "T"
        {"ev": "T", "sym": a, "n": 5},  # matched by every subscription but TX.*: marks the end
    ]
    seqs = feed(relay, upstream, elements, batch=None)
    expected = {
        "exact": [0, 5],
        "prefix": [0, 2, 5],
        "star": [0, 1, 2, 3, 4, 5],
        "several": [0, 3, 5],
        "prefix_of_other_event": [4],
        "no_topics_parameter": [0, 1, 2, 3, 4, 5],
    }

    for name, numbers in expected.items():
        client = clients[name]
        client.wait_for_seq(seqs[numbers[-1]])
        assert [e["data"]["n"] for e in client.events] == numbers, name
        assert seqs_of(client.events) == [seqs[n] for n in numbers], name


def test_subscribe_and_unsubscribe_change_the_subscription_and_answer_with_all_of_it(relay, upstream, ws):
    a, b = unique_sym(), unique_sym()
    client = ws(relay, topics=f"T.{a}", snapshot=0)
    client.read_snapshot()

    client.send_json({"action": "subscribe", "topics": [f"T.{b}"]})
    assert sorted(client.next_frame("subscribed")["topics"]) == sorted([f"T.{a}", f"T.{b}"])
    first = feed(relay, upstream, trades(0, 1, a) + trades(0, 1, b))
    assert seqs_of(client.wait_for_events(2)) == first

    client.send_json({"action": "unsubscribe", "topics": [f"T.{a}"]})
    assert client.next_frame("subscribed")["topics"] == [f"T.{b}"]
    # a's event comes first; b's event after it proves a's was not delivered
    second = feed(relay, upstream, trades(1, 2, a) + trades(1, 2, b))
    client.wait_for_seq(second[1])
    assert seqs_of(client.events) == first + [second[1]]


def test_ping_is_answered_with_pong(relay, ws):
    client = ws(relay, snapshot=0)
    client.read_snapshot()
    client.send_json({"action": "ping"})
    assert client.next_frame("pong") == {"type": "pong"}


def test_unusable_client_frames_get_an_error_frame_and_the_connection_stays_open(relay, upstream, ws):
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    garbage = [
        "this is not json",
        "{\"action\": ",
        "[1, 2, 3]",
        "42",
        '{"no_action": true}',
        '{"action": "dance"}',
        '{"action": "subscribe", "topics": 5}',
        b"\x00\xff\xfe binary",
    ]
    for frame in garbage:
        client.send(frame)
        error = client.next_frame("error")
        assert isinstance(error.get("message"), str) and error["message"], (frame, error)

    client.send_json({"action": "ping"})
    client.next_frame("pong")
    seqs = feed(relay, upstream, trades(0, 2, sym))
    assert seqs_of(client.wait_for_events(2)) == seqs
    assert not client.closed


def test_a_client_frame_of_exactly_64_kib_is_accepted(relay, ws):
    client = ws(relay, snapshot=0)
    client.read_snapshot()
    message = '{"action": "ping", "pad": "' + "x" * 65536
    message = message[: 65536 - 2] + '"}'
    assert len(message.encode()) == 65536
    client.send(message)
    client.next_frame("pong")


def test_a_client_frame_over_64_kib_closes_the_connection_with_1009(relay, ws):
    client = ws(relay, snapshot=0)
    client.read_snapshot()
    message = '{"action": "ping", "pad": "' + "x" * 65536 + '"}'
    client.send(message)
    assert client.expect_close() == 1009


# -- fan-out (§3) -------------------------------------------------------------


def test_fifty_clients_each_get_all_5000_events_once_in_seq_order(relay, upstream, ws):
    sym = unique_sym()
    topic = f"T.{sym}"
    total = 5000
    health = relay.health()
    base, epoch = health["last_seq"], health["epoch"]

    early = [ws(relay, topics=topic, snapshot=0) for _ in range(40)]
    for client in early:
        client.read_snapshot()

    failures: list[str] = []

    def collect(client: WsClient) -> None:
        try:
            client.wait_for_events(total, timeout_s=120)
        except AssertionError as exc:
            failures.append(str(exc))

    flowing, late_joined = threading.Event(), threading.Event()

    def publish() -> None:
        # Paced (a few ms per 50-event frame) until the late clients have
        # joined, so they join while batches are in flight; then full speed.
        try:
            for index, frame in enumerate(frames_of(trades(0, total, sym), batch=50)):
                if upstream.send(frame) != 1:
                    raise AssertionError("the relay is not connected to the upstream exactly once")
                if index == 5:
                    flowing.set()
                if not late_joined.is_set():
                    time.sleep(0.004)
        except AssertionError as exc:
            failures.append(f"publisher: {exc}")
        finally:
            flowing.set()

    publisher = threading.Thread(target=publish)
    collectors = [threading.Thread(target=collect, args=(client,)) for client in early]
    started = time.monotonic()
    for thread in collectors:
        thread.start()
    publisher.start()
    # Ten more join while the feed is flowing, resuming from before its start:
    # their snapshot and live frames must dovetail exactly.
    assert flowing.wait(30)
    late = []
    for _ in range(10):
        client = ws(relay, topics=topic, since=base, epoch=epoch)
        late.append(client)
        late_collector = threading.Thread(target=collect, args=(client,))
        collectors.append(late_collector)
        late_collector.start()
    late_joined.set()
    publisher.join(60)
    for thread in collectors:
        thread.join(130)
    elapsed = time.monotonic() - started

    assert not publisher.is_alive() and not any(t.is_alive() for t in collectors)
    assert not failures, f"{len(failures)} clients fell short: {failures[:3]}"
    expected_data = trades(0, total, sym)
    first = early[0].events[0]["seq"]
    assert first > base
    for index, client in enumerate(early + late):
        assert client.snapshot is not None and client.snapshot["recovered"] is True, index
        assert len(client.events) == total, (index, len(client.events))
        assert seqs_of(client.events) == list(range(first, first + total)), index
        assert data_of(client.events) == expected_data, index
    joined_mid_feed = [len(c.snapshot["events"]) for c in late if 0 < len(c.snapshot["events"]) < total]
    assert joined_mid_feed, "no late client joined while the feed was flowing: the test proved nothing"
    print(f"50 clients x {total} events in {elapsed:.1f}s")
