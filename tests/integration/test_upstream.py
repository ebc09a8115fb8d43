"""The upstream connection: handshake headers, init messages, oversized frames, and reconnecting
after the upstream dies or closes (contract §1, §2, §6 /health, §10)."""

from __future__ import annotations

import json
import time

import pytest
from support.events import feed, seqs_of, trades, unique_sym
from support.waiting import wait_until

UPSTREAM_INIT = [
    {"action": "auth", "params": "upstream-key-123"},
    {"action": "subscribe", "params": "T.*,Q.*"},
]
UPSTREAM_HEADERS = {"X-Api-Key": "upstream-key-123", "X-Feed-Client": "relayhouse-tests"}
MAX_FRAME_BYTES = 64 * 1024

RELAY_ENV = {
    "UPSTREAM_INIT": json.dumps(UPSTREAM_INIT),
    "UPSTREAM_HEADERS": json.dumps(UPSTREAM_HEADERS),
    "UPSTREAM_MAX_FRAME_BYTES": str(MAX_FRAME_BYTES),
    "UPSTREAM_BACKOFF_MIN_MS": "20",
    "UPSTREAM_BACKOFF_MAX_MS": "200",
    "STARTUP_GRACE_S": "0",
}


def assert_handshake_and_init(upstream, record) -> None:
    """The relay identified itself with UPSTREAM_HEADERS and sent UPSTREAM_INIT, in order."""
    for name, value in UPSTREAM_HEADERS.items():
        assert record.headers.get(name.lower()) == value, (name, record.headers)
    upstream.wait_for_received(record, len(UPSTREAM_INIT))
    assert record.received_json() == UPSTREAM_INIT


def test_health_describes_the_connected_upstream(relay, upstream):
    health = relay.health()
    assert health["status"] == "ok"
    assert health["upstream"]["url"] == upstream.url
    assert health["upstream"]["connected"] is True
    assert relay.get("/health?strict=1").status_code == 200


def test_the_first_connection_carries_the_headers_and_the_init_messages(relay, upstream):
    record = upstream.wait_for_connections(1)
    assert record.index == 1
    assert_handshake_and_init(upstream, record)


def test_a_frame_over_the_size_limit_is_skipped_and_the_feed_goes_on(relay, upstream, ws):
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    connections = upstream.connection_count
    last_seq = relay.health()["last_seq"]
    oversized = json.dumps({"ev": "T", "sym": sym, "n": -1, "blob": "x" * MAX_FRAME_BYTES})

    assert upstream.send(oversized) == 1
    (seq,) = feed(relay, upstream, trades(0, 1, sym), batch=None)

    assert seq == last_seq + 1, "the oversized frame must not have become an event"
    (event,) = client.wait_for_events(1)
    assert event["data"]["n"] == 0
    assert upstream.connection_count == connections
    assert relay.health()["upstream"]["connected"] is True


@pytest.mark.parametrize("how", ["reset", "eof", "clean", "reset"], ids=["reset", "eof", "clean", "reset-again"])
def test_the_relay_reconnects_after_the_upstream_goes_away_and_clients_see_no_gap(relay, upstream, ws, how):
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    before = feed(relay, upstream, trades(0, 3, sym))
    client.wait_for_events(3)
    reconnects = relay.health()["upstream"]["reconnects"]
    connections = upstream.connection_count

    upstream.stop(how)
    wait_until(lambda: relay.health()["upstream"]["connected"] is False, 10, "the relay to notice the loss")
    degraded = relay.get("/health?strict=1")
    assert degraded.status_code == 503
    assert degraded.json()["status"] == "degraded"
    assert relay.health()["status"] == "degraded"  # and plain /health still answers 200
    assert relay.health()["upstream"]["last_error"] is not None  # why, whichever way it went
    if how == "clean":  # said once; the reconnect attempts' own errors may replace it in /health by now
        wait_until(lambda: "closed by the upstream (1001" in relay.log_text(), 5, "the close's code in the log")

    upstream.start()
    record = upstream.wait_for_connections(connections + 1)
    wait_until(lambda: relay.health()["upstream"]["connected"] is True, 10, "the relay to reconnect")
    assert relay.health()["upstream"]["reconnects"] > reconnects
    assert_handshake_and_init(upstream, record)
    assert relay.get("/health?strict=1").status_code == 200

    after = feed(relay, upstream, trades(3, 6, sym))
    assert after[0] == before[-1] + 1
    assert seqs_of(client.wait_for_events(6)) == before + after
    assert [e["data"]["n"] for e in client.events] == list(range(6))
    assert not client.closed


def test_the_relay_keeps_retrying_while_the_upstream_stays_down(relay, upstream, ws):
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    connections = upstream.connection_count

    upstream.stop("eof")
    wait_until(lambda: relay.health()["upstream"]["connected"] is False, 10, "the relay to notice the loss")
    # Keep the port closed long enough for several refused attempts at the
    # configured backoff (20..200 ms); health must say degraded throughout.
    hold_outage(relay, 1.5)

    upstream.start()
    record = upstream.wait_for_connections(connections + 1, timeout_s=10)
    assert_handshake_and_init(upstream, record)
    seqs = feed(relay, upstream, trades(0, 2, sym))
    assert seqs_of(client.wait_for_events(2)) == seqs


def hold_outage(relay, seconds: float) -> None:
    """Poll /health for `seconds` while the upstream is down: it must say degraded every time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = relay.health()
        assert health["upstream"]["connected"] is False
        assert health["status"] == "degraded"
        time.sleep(0.1)


def test_an_upstream_that_refuses_the_handshake_with_line_breaks_and_escapes_forges_no_log_line(launch_relay):
    """websocket-client's refusal carries the upstream's status line and body as they came: the relay logged
    them (and showed them in /health) unescaped, so a hostile upstream wrote whole forged lines and terminal
    escapes on every reconnect (an outside check of this session's log fixes)."""
    import socket
    import threading

    forged = "[2026-12-07 12:00:00 +0000] [1] [ERROR] FORGED LINE"
    body = f"nope\n{forged}\n\x1b]0;pwned\x07\x1b[2J".encode()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def refuse() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 503 Busy\x1b[5mBLINK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), body))

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        relay = launch_relay(f"ws://127.0.0.1:{server.getsockname()[1]}/feed",
                             {"CLICKHOUSE_URL": "none", "UPSTREAM_BACKOFF_MAX_MS": "200"}, wait_upstream=False)
        wait_until(lambda: "FORGED" in (relay.health()["upstream"]["last_error"] or ""), 15, "the refusal")
        error = relay.health()["upstream"]["last_error"]
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert not any(ord(c) < 0x20 for c in error), error
    log = relay.log_text()
    assert "FORGED" in log and "\x1b" not in log
    assert not any(line.startswith(forged) for line in log.splitlines())


def test_handling_a_large_frame_is_not_counted_as_the_upstreams_silence(fresh_upstream, launch_relay):
    """The relay's own time on a large frame (in parts) was counted as upstream silence: past the ping
    interval plus its time-out the connection was dropped with the frames already in its socket (an
    outside check: 1,685 of 2,000 lost at 1 s + 1 s). Between parts the reader now counts as held."""
    relay = launch_relay(fresh_upstream, {"UPSTREAM_PING_INTERVAL_S": "0.5", "UPSTREAM_PING_TIMEOUT_S": "0.5",
                                          "CLICKHOUSE_URL": "none"})
    fresh_upstream.emit(["[" + ",".join(["1"] * 400_000) + "]"] + ['{"n": %d}' % i for i in range(2000)],
                        batch=None)
    wait_until(lambda: relay.health()["last_seq"] >= 402_000, 60, "every element and frame numbered",
               describe=lambda: str(relay.health()["last_seq"]))
    assert relay.health()["last_seq"] == 402_000 and fresh_upstream.connection_count == 1


def test_a_silent_upstream_is_left_when_the_silence_passes_interval_plus_timeout_not_at_the_next_ping(launch_relay):
    """An upstream that completes the handshake, then neither sends nor answers a ping: the relay reconnects once
    nothing arrived for UPSTREAM_PING_INTERVAL_S + UPSTREAM_PING_TIMEOUT_S (4 + 1 s here). Checked only when a
    ping was due, it went at the second ping, 8 s (40 s for the documented 30 at the defaults: an outside
    audit)."""
    import base64
    import hashlib
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[tuple[float, socket.socket]] = []

    def serve() -> None:
        while len(accepted) < 2:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            accepted.append((time.monotonic(), conn))  # then silence: nothing read, nothing sent

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        launch_relay(f"ws://127.0.0.1:{server.getsockname()[1]}/feed",
                     {"UPSTREAM_PING_INTERVAL_S": "4", "UPSTREAM_PING_TIMEOUT_S": "1", "CLICKHOUSE_URL": "none"},
                     wait_upstream=False)
        wait_until(lambda: len(accepted) >= 2, 20, "the relay to leave the silent upstream and connect again")
        silence = accepted[1][0] - accepted[0][0]
        assert 5.0 <= silence < 7.0, f"reconnected {silence:.1f} s after the silent connection was made"
    finally:
        server.close()
        for _, conn in accepted:
            conn.close()
        thread.join(5)
