"""Each bound reached from the outside, with the worker's memory watched through /proc (issue 14).

- a /ws client subscribing to 100,000 patterns (100 frames of 1,000, the most
  one frame may carry): past WS_MAX_PATTERNS it gets an error frame per
  subscribe, the connection stays, another client is served meanwhile, and the
  worker's RSS grows by less than FLOOD_RSS_BOUND;
- an upstream frame header announcing 2^62 bytes, followed by 64 MiB of bytes
  that never finish it: nothing is gathered (RSS grows by less than
  FRAME_RSS_BOUND), the frame is counted, and the connection is made again
  once no whole frame has arrived for ping interval + time-out;
- an enrichment source that does not answer within any wait (every query
  sleeps 3 s, the most ClickHouse 18.16 allows per block) while 1,000 frames/s
  bring a new topic each: at most ENRICH_CONCURRENCY queries run (with the
  bound at 1,000 the first run of this test grew the worker by 935 MiB and
  starved the store writer with "too many simultaneous queries"), the ingest
  queue stops at ENRICH_QUEUE_MAX, events go out without enrichment
  (counted), every one reaches the client in order, and RSS grows by less
  than ENRICH_RSS_BOUND.

Bounds on RSS are stated as growth over the worker's settled RSS; they are
loose on purpose (a gevent worker's heap moves by a few MiB on its own) and
each is several times below what the unbounded code used.
"""

from __future__ import annotations

import json
import threading
import time

from support.events import unique_sym
from support.waiting import wait_until

from faults.harness import metric_value, rss_bytes, store_env, worker_pid

MIB = 1 << 20
FLOOD_RSS_BOUND = 48 * MIB
FRAME_RSS_BOUND = 24 * MIB
ENRICH_RSS_BOUND = 48 * MIB
MAX_PATTERNS = 10_000


def test_a_subscribe_flood_of_100000_patterns_is_capped_with_an_error_and_the_connection_stays(
        fresh_upstream, start_relay, ws):
    relay = start_relay(fresh_upstream, {"CLICKHOUSE_URL": "none", "WS_MAX_PATTERNS": str(MAX_PATTERNS)})
    pid = worker_pid(relay.proc.pid)
    other = ws(relay, topics="T.OTHER", snapshot=0)
    other.read_snapshot()
    flooder = ws(relay, topics="T.NONE", snapshot=0)
    flooder.read_snapshot()
    before = rss_bytes(pid)
    errors, last = [], None
    for frame_index in range(100):
        patterns = [f"F.{frame_index}.{i}" for i in range(1000)]
        flooder.send_json({"action": "subscribe", "topics": patterns})
        reply = flooder.next_frame("subscribed", timeout_s=30)
        last = reply["topics"]
        errors += [f for f in flooder.pending_frames() if f["type"] == "error"]
        if frame_index % 10 == 9:  # meanwhile another client is served
            fresh_upstream.emit([{"ev": "T", "sym": "OTHER", "n": frame_index}], batch=None)
            other.wait_for_events(frame_index // 10 + 1, timeout_s=10)
    growth = rss_bytes(pid) - before
    assert len(last) == MAX_PATTERNS and last[0] == "T.NONE"
    flooder.send_json({"action": "ping"})
    flooder.next_frame("pong", timeout_s=10)  # the connection stays
    error_frames = [f for f in flooder.frames if f["type"] == "error"]
    assert len(error_frames) == 91, f"one error per subscribe past the cap, got {len(error_frames)}"
    assert error_frames[0]["message"].startswith(f"subscription limit of {MAX_PATTERNS} patterns reached")
    print(f"subscribe flood: worker RSS grew by {growth / MIB:.1f} MiB")
    assert growth < FLOOD_RSS_BOUND, f"worker RSS grew by {growth / MIB:.1f} MiB"
    assert metric_value(relay.get("/metrics").text, "relayhouse_bound_hits_total", 'bound="ws_patterns"') == 91


def test_a_frame_header_announcing_2_to_the_62_bytes_allocates_nothing_and_the_connection_is_made_again(
        fresh_upstream, start_relay, ws):
    relay = start_relay(fresh_upstream, {"CLICKHOUSE_URL": "none", "UPSTREAM_PING_INTERVAL_S": "1",
                                          "UPSTREAM_PING_TIMEOUT_S": "1"})
    pid = worker_pid(relay.proc.pid)
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    fresh_upstream.emit([{"ev": "T", "sym": sym, "n": 0}], batch=None)
    client.wait_for_events(1)
    before = rss_bytes(pid)
    (conn,) = fresh_upstream.open_connections()
    sock = conn.connection.socket
    sock.sendall(bytes([0x81, 0x7F]) + (1 << 62).to_bytes(8, "big"))
    block = b"x" * MIB
    peak = 0
    for _ in range(64):
        sock.sendall(block)
        peak = max(peak, rss_bytes(pid) - before)
    wait_until(lambda: relay.health()["upstream"]["oversize_frames"] == 1, 10, "the frame to be counted")
    wait_until(lambda: fresh_upstream.connection_count >= 2 and relay.health()["upstream"]["connected"], 15,
               "the relay to make the connection again")
    peak = max(peak, rss_bytes(pid) - before)
    print(f"2^62 header + 64 MiB: worker RSS grew by at most {peak / MIB:.1f} MiB")
    assert peak < FRAME_RSS_BOUND, f"worker RSS grew by {peak / MIB:.1f} MiB on a frame it must not gather"
    fresh_upstream.emit([{"ev": "T", "sym": sym, "n": 1}], batch=None)
    events = client.wait_for_events(2)
    assert [e["data"]["n"] for e in events] == [0, 1]


def test_an_enrichment_source_that_never_answers_in_time_leaves_a_bounded_queue_and_every_event_delivered(
        fresh_upstream, start_relay, store, ws):
    url, _probe = store()
    env = store_env(url, ENRICH_SQL="SELECT sleep(3) AS slept, %(topic)s AS t", ENRICH_TIMEOUT_MS="50",
                    ENRICH_QUEUE_MAX="200", ENRICH_CONCURRENCY="20", ENRICH_CACHE_MAX="1000")
    relay = start_relay(fresh_upstream, env)
    pid = worker_pid(relay.proc.pid)
    client = ws(relay, topics="E.*", snapshot=0)
    client.read_snapshot()
    before = rss_bytes(pid)
    sent = 0
    stop = threading.Event()

    def pump() -> None:  # 1,000 frames/s, each a topic never seen before
        nonlocal sent
        next_at = time.monotonic()
        while not stop.is_set() and sent < 8000:
            if fresh_upstream.send(json.dumps({"ev": "E", "sym": f"S{sent}", "n": sent})) == 1:
                sent += 1
            next_at += 0.001
            time.sleep(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    peak = 0
    while thread.is_alive():
        peak = max(peak, rss_bytes(pid) - before)
        time.sleep(0.1)
    events = client.wait_for_events(sent, timeout_s=60)
    peak = max(peak, rss_bytes(pid) - before)
    assert [e["data"]["n"] for e in events[:sent]] == list(range(sent)), "every event, once, in order"
    hits = metric_value(relay.get("/metrics").text, "relayhouse_bound_hits_total", 'bound="enrich_queue"')
    assert hits > 0, "the queue must have reached its bound (the source never answers within the wait)"
    assert sum(1 for e in events if "enrichment" not in e) > sent / 2
    enrich = relay.health()["enrich"]
    assert enrich["unenriched"] == hits and enrich["cached_topics"] <= 1000, enrich
    busy = metric_value(relay.get("/metrics").text, "relayhouse_enrich_errors_total", 'kind="busy"')
    assert busy > 0, "with every query slot taken, topics must go without instead of queueing queries"
    print(f"enrichment that never answers: worker RSS grew by at most {peak / MIB:.1f} MiB")
    assert peak < ENRICH_RSS_BOUND, f"worker RSS grew by {peak / MIB:.1f} MiB"
