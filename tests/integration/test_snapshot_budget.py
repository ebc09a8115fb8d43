"""SNAPSHOT_QUEUE_MAX_BYTES: the snapshot bytes a worker holds queued for its clients are bounded.

A snapshot is not counted in its client's own bound (a resume may be larger than the bound on its own),
so a resume of RESUME_MAX_EVENTS held ~30 MB until its client read it, and a crowd resuming after a
deploy held that many times over. A resume with `since` now waits while the worker holds more than the
budget, and is refused after SNAPSHOT_QUEUE_WAIT_S: /ws with `closing` `busy` and 1013, /sse with 503.
"""

from __future__ import annotations

import re
import socket
import time

from support.clients import RawWsClient, upgrade_headers
from support.events import trades, unique_sym
from support.waiting import wait_until

MIB = 1 << 20
EVENTS = 40_000  # ~10 MB of snapshot, far more than the kernel's buffers take for a client that reads nothing


def metric(relay, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", relay.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_resume_waits_while_the_worker_holds_its_snapshot_budget_and_is_refused_after_the_wait(
        fresh_upstream, launch_relay, ws, sse):
    relay = launch_relay(fresh_upstream, {"CACHE_MAX_ITEMS": str(EVENTS), "SNAPSHOT_QUEUE_MAX_BYTES": str(MIB),
                                          "SNAPSHOT_QUEUE_WAIT_S": "3", "CLICKHOUSE_URL": "none"})
    sym = unique_sym()
    fresh_upstream.emit(trades(0, EVENTS, sym=sym, pad="x" * 150), batch=1000)
    wait_until(lambda: relay.health()["last_seq"] >= EVENTS, 30, "the events to be cached")
    hog = RawWsClient("127.0.0.1", relay.port, relay.target("/ws", topics=f"T.{sym}", since=0), rcvbuf=4096)
    try:
        wait_until(lambda: metric(relay, "relayhouse_snapshot_queued_bytes") > MIB, 10,
                   "the unread snapshot to be queued")
        # the 101 goes out before the wait (not corked with the frames after it: a client's handshake
        # time-out would end it first), the refusal after it
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as raw:
            raw.sendall(f"GET {relay.target('/ws', topics=f'T.{sym}', since=EVENTS - 10)} HTTP/1.1\r\n"
                        f"Host: 127.0.0.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode()
                                                                for k, v in upgrade_headers().items()) + b"\r\n")
            assert raw.recv(12) == b"HTTP/1.1 101"
            assert time.monotonic() - started < 2.0, "the 101 waited for the snapshot budget"
        refused = ws(relay, topics=f"T.{sym}", since=EVENTS - 10)
        assert refused.next_frame("closing")["reason"] == "busy"
        assert refused.expect_close() == 1013
        answer = relay.get("/sse", params={"topics": f"T.{sym}", "since": str(EVENTS - 10)})
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        wait_until(lambda: metric(relay, 'relayhouse_bound_hits_total{bound="snapshot_queue"}') == 3, 10,
                   "three refusals counted")
        # a client without `since` is not held back: its snapshot is small (SNAPSHOT_MAX)
        plain = ws(relay, topics=f"T.{sym}", snapshot=5)
        assert len(plain.read_snapshot()["events"]) == 5
    finally:
        hog.close()
    # once the unread snapshot is gone with its client, resumes go through again
    wait_until(lambda: metric(relay, "relayhouse_snapshot_queued_bytes") < MIB, 10, "the queue to drain")
    resumed = ws(relay, topics=f"T.{sym}", since=EVENTS - 10)
    snapshot = resumed.read_snapshot()
    assert snapshot["recovered"] is True and [e["seq"] for e in snapshot["events"]] == list(range(EVENTS - 9, EVENTS + 1))
