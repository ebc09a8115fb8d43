"""/sse: one message per event, resume with Last-Event-ID or since, gaps, keep-alives
(contract §4, §10)."""

from __future__ import annotations

from support.events import data_of, feed, seqs_of, trades, unique_sym

RELAY_ENV: dict[str, str] = {}


def test_each_event_is_a_message_with_its_seq_as_id_and_its_json_as_data(relay, upstream, sse):
    sym = unique_sym()
    stream = sse(relay, topics=f"T.{sym}", snapshot=0)
    assert stream.status == 200
    assert stream.headers.get("Content-Type", "").startswith("text/event-stream")

    seqs = feed(relay, upstream, trades(0, 3, sym))
    messages = [stream.next_message() for _ in seqs]

    assert [m.event for m in messages] == ["event"] * 3
    assert [m.id for m in messages] == [str(seq) for seq in seqs]  # contract §4: `id: seq`
    events = [m.json() for m in messages]
    assert seqs_of(events) == seqs
    assert data_of(events) == trades(0, 3, sym)
    assert {e["topic"] for e in events} == {f"T.{sym}"}
    assert all(isinstance(e["ts"], int) for e in events)


def test_the_snapshot_comes_as_ordinary_event_messages_then_live_events(relay, upstream, sse):
    sym, other = unique_sym(), unique_sym()
    seqs = feed(relay, upstream, trades(0, 5, sym) + trades(0, 5, other))

    stream = sse(relay, topics=f"T.{sym}", snapshot=3)
    snapshot = stream.events(3)
    live = feed(relay, upstream, trades(5, 7, sym))

    assert seqs_of(snapshot) == seqs[2:5]
    assert seqs_of(stream.events(2)) == live


def test_last_event_id_resumes_after_that_event_without_loss_or_duplicates(relay, upstream, sse):
    sym = unique_sym()
    first = sse(relay, topics=f"T.{sym}", snapshot=0)
    seqs = feed(relay, upstream, trades(0, 10, sym))
    seen = first.events(4)  # read part of it, then drop the connection, like a browser
    first.close()
    later = feed(relay, upstream, trades(10, 15, sym))

    resumed = sse(relay, topics=f"T.{sym}", headers={"Last-Event-ID": str(seen[-1]["seq"])})
    replay = resumed.events(11)
    live = feed(relay, upstream, trades(15, 16, sym))

    assert seqs_of(replay) == seqs[4:] + later
    assert data_of(replay) == trades(4, 15, sym)
    assert seqs_of(resumed.events(1)) == live


def test_the_id_an_eventsource_sends_back_resumes_and_one_naming_another_epoch_is_not_skipped(relay, upstream, sse):
    sym = unique_sym()
    first = sse(relay, topics=f"T.{sym}", snapshot=0)
    seqs = feed(relay, upstream, trades(0, 6, sym))
    first.events(3)
    last_id = first.messages[-1].id  # what a browser's EventSource sends back as Last-Event-ID
    first.close()
    resumed = sse(relay, topics=f"T.{sym}", headers={"Last-Event-ID": last_id})
    assert seqs_of(resumed.events(3)) == seqs[3:]
    # the same seq named as another seq space's (a reset epoch, by a client that keeps the epoch): everything
    # there is, not "after seq N"
    foreign = sse(relay, topics=f"T.{sym}", headers={"Last-Event-ID": f"another-epoch:{seqs[3]}"})
    assert seqs_of(foreign.events(6)) == seqs


def test_an_eventsource_reconnecting_to_a_url_with_since_resumes_from_its_last_event(relay, upstream, sse):
    """The browser sends Last-Event-ID to the URL it was given, `since` included: the header is the later
    point. Before, the query won and the reconnect replayed every event after `since` (an outside audit:
    20 of 20 again)."""
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 3, sym))
    params = {"topics": f"T.{sym}", "since": seqs[0], "epoch": relay.health()["epoch"]}
    first = sse(relay, **params)
    assert seqs_of(first.events(2)) == seqs[1:]
    later = feed(relay, upstream, trades(3, 6, sym))
    assert seqs_of(first.events(3)) == later
    last_id = first.messages[-1].id
    first.close()
    resumed = sse(relay, **params, headers={"Last-Event-ID": last_id})
    live = feed(relay, upstream, trades(6, 7, sym))
    assert seqs_of(resumed.events(1)) == live  # nothing of seqs[1:] + later again


def test_since_resumes_like_last_event_id(relay, upstream, sse):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 6, sym))

    stream = sse(relay, topics=f"T.{sym}", since=seqs[1], epoch=relay.health()["epoch"])

    assert seqs_of(stream.events(4)) == seqs[2:]
    live = feed(relay, upstream, trades(6, 7, sym))
    assert seqs_of(stream.events(1)) == live


def test_partial_recovery_sends_a_gap_message_first(fresh_upstream, launch_relay, sse):
    relay = launch_relay(fresh_upstream, {"CACHE_MAX_ITEMS": "20"})
    sym = unique_sym()
    seqs = feed(relay, fresh_upstream, trades(0, 50, sym))

    stream = sse(relay, headers={"Last-Event-ID": str(seqs[0] - 1)})
    gap = stream.next_message()

    assert gap.event == "gap"
    assert gap.json() == {"missing": [seqs[0], seqs[29]]}
    assert seqs_of(stream.events(20)) == seqs[30:]


def test_keep_alive_comments_flow_on_an_idle_stream(fresh_upstream, launch_relay, sse):
    relay = launch_relay(fresh_upstream, {"SSE_KEEPALIVE_S": "1"})
    stream = sse(relay, topics=f"T.{unique_sym()}", snapshot=0)
    assert stream.status == 200
    stream.wait_for_comment(timeout_s=5)
