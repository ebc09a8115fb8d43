"""A client's bound counts everything queued for it (contract §3), and only that.

Answers to a client's own messages (action replies, Polygon statuses, pongs) are queued like events: a
client that sends and never reads is closed with 1013 at WS_QUEUE_MAX_BYTES, where before its queue
grew without end (1 GB from 18 KB of subscribes, seen by an audit). A snapshot larger than the bound,
read at full speed, is not counted against it while it drains (before, such a client was closed as a
slow consumer at its first live event).
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from support.clients import RawWsClient
from support.events import trades, unique_sym
from support.waiting import wait_until

BOUND = 64 * 1024
RELAY_ENV = {"WS_QUEUE_MAX_BYTES": str(BOUND), "SNAPSHOT_MAX": "10000", "CACHE_MAX_ITEMS": "20000"}


def slow_closes(relay, transport: str) -> float:
    match = re.search(rf'^relayhouse_slow_consumer_closes_total{{transport="{transport}"}} (\S+)$',
                      relay.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def flood_then_expect_a_1013(relay, client: RawWsClient, frames, transport: str) -> None:
    """Send `frames` without reading a byte; the relay must close the client as slow, then say why."""
    before = slow_closes(relay, transport)
    try:
        for opcode, payload in frames:
            client.send_frame(opcode, payload)
    except OSError:
        pass  # closed under us: what the bound does
    wait_until(lambda: slow_closes(relay, transport) > before, 20, "the client to be closed as a slow consumer")
    seen = client.read_until_close(timeout_s=20)
    assert seen.code == 1013, (seen.code, seen.reason)
    assert relay.get("/health").status_code == 200


def test_a_ws_client_that_sends_subscribes_and_never_reads_is_closed_at_its_byte_bound(relay):
    client = RawWsClient("127.0.0.1", relay.port, relay.target("/ws", topics="NOPE", snapshot=0))
    try:
        many = json.dumps({"action": "subscribe", "topics": [f"Z.{i:04d}{'x' * 200}" for i in range(300)]}).encode()
        again = json.dumps({"action": "subscribe", "topics": ["NOPE"]}).encode()
        # each answer lists all 301 patterns (~62 KB): 400 of them are ~25 MB for 8 KB sent
        flood_then_expect_a_1013(relay, client, [(0x1, many)] + [(0x1, again)] * 400, "ws")
    finally:
        client.close()


def test_a_ws_client_that_pings_and_never_reads_its_pongs_is_closed_at_its_byte_bound(relay):
    client = RawWsClient("127.0.0.1", relay.port, relay.target("/ws", topics="NOPE", snapshot=0))
    try:
        flood_then_expect_a_1013(relay, client, [(0x9, b"p" * 125)] * 40_000, "ws")  # 5 MB of pongs
    finally:
        client.close()


def test_a_polygon_client_that_sends_subscribes_and_never_reads_is_closed_at_its_byte_bound(relay):
    client = RawWsClient("127.0.0.1", relay.port, "/stocks")
    try:
        auth = json.dumps({"action": "auth", "params": "any"}).encode()
        subscribe = json.dumps({"action": "subscribe", "params": ",".join(f"T.Z{i}" for i in range(1000))}).encode()
        # each answer is a status per topic (~60 KB for 7 KB sent)
        flood_then_expect_a_1013(relay, client, [(0x1, auth)] + [(0x1, subscribe)] * 400, "polygon")
    finally:
        client.close()


@pytest.mark.parametrize("round_", range(2))
def test_a_snapshot_over_the_bound_read_at_full_speed_is_not_a_slow_consumer(relay, upstream, ws, round_):
    """6 MB of snapshot against a 64 KiB bound, with events arriving while it drains: the client gets
    the snapshot and every live event after it, in order, and is never closed."""
    sym = unique_sym()
    pad = "x" * 2500
    before = relay.get("/cache/stats").json()["items"]
    upstream.emit([{**t, "pad": pad} for t in trades(0, 2500, sym)], batch=100)
    wait_until(lambda: relay.get("/cache/stats").json()["items"] >= before + 2500, 20, "the cache to hold the 2,500")
    stop = threading.Event()
    sent = []

    def feed() -> None:
        n = 2500
        while not stop.is_set() and n < 3500:
            upstream.emit(trades(n, n + 5, sym), batch=5)  # ~75 KB/s: the bound holds ~1 s of them
            sent.extend(range(n, n + 5))
            n += 5
            time.sleep(0.01)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        client = ws(relay, topics=f"T.{sym}", snapshot=2500)
        assert len(client.read_snapshot(timeout_s=30)["events"]) == 2500
    finally:
        stop.set()
        feeder.join(10)
    final_n = sent[-1]
    # closed as slow, the wait fails with the close code (1013) in its message
    client.wait_until(lambda: client.events[-1]["data"]["n"] == final_n, 30, "the last live event")
    seqs = [e["seq"] for e in client.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "snapshot then live, none missing or twice"
    assert len(seqs) > 2500, "live events came after the snapshot"

