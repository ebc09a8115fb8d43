"""Idle connections (issue #17): what 2,000 of them cost the worker, silent peers dropped on schedule,
and held connections still counted against WORKER_CONNECTIONS.

An idle connection is held without a greenlet (webapp/conn.py): measured at 3.7 KiB of
worker RSS per /ws connection and 1.6 KiB per /sse one (bench/idle.py, docs/benchmarks.md;
3.2 and 1.7 KiB in this test); the targets are 12 and 8 KiB. The memory tests assert about
twice what was measured, 8 and 4 KiB: allocator noise (1-2 MiB over 2,000 connections) cannot
fail them, and a regression that brings back even one shallow greenlet per connection does
(11.6 and 9.6 KiB here, tried). Twice the targets (24 and 16 KiB) would let it pass.

Bounds, stated: RSS is read after a 50-connection warm-up has come and gone, then with
2,000 connections open and counted by /health; the growth divided by 2,000 is the cost.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from support.idle import RawWebSocket, open_idle, request_bytes
from support.waiting import wait_until

from faults.harness import rss_bytes, worker_pid

IDLE = 2000
WS_BOUND_KIB = 8  # ~2 x the 3.7 KiB measured (target 12)
SSE_BOUND_KIB = 4  # ~2 x the 1.6 KiB measured (target 8)
OPCODE_TEXT, OPCODE_CLOSE, OPCODE_PING = 0x1, 0x8, 0x9


def clients(relay) -> int:
    return relay.health()["clients"]


@pytest.mark.parametrize(("path", "bound_kib"), [("/ws", WS_BOUND_KIB), ("/sse", SSE_BOUND_KIB)])
def test_2000_idle_connections_cost_the_worker_less_than_twice_the_target(fresh_upstream, start_relay, path,
                                                                          bound_kib):
    relay = start_relay(fresh_upstream, {})
    pid = worker_pid(relay.proc.pid)
    websocket = path == "/ws"
    target = f"{path}?snapshot=0"
    for s in open_idle(relay.port, target, 50, websocket=websocket):  # code and buffers warm, not per connection
        s.close()
    wait_until(lambda: clients(relay) == 0, 10, "the warm-up clients gone")
    before = rss_bytes(pid)
    held = open_idle(relay.port, target, IDLE, websocket=websocket)
    try:
        wait_until(lambda: clients(relay) == IDLE, 30, f"{IDLE} clients counted")
        per_connection_kib = (rss_bytes(pid) - before) / IDLE / 1024
    finally:
        for s in held:
            s.close()
    assert per_connection_kib < bound_kib, f"{per_connection_kib:.1f} KiB per idle {path} connection"
    wait_until(lambda: clients(relay) == 0, 20, "every closed connection noticed")


class PongThread(threading.Thread):
    """Answers every ping of one client, as a browser does, until stopped."""

    def __init__(self, client: RawWebSocket):
        super().__init__(daemon=True)
        self.client, self.pings, self.ended, self.halt = client, 0, False, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                frame = self.client.frame(0.2)
            except TimeoutError:
                continue
            if frame is None:
                self.ended = True
                return
            if frame[0] == OPCODE_PING:
                self.pings += 1
                self.client.pong(frame[1])


def test_silent_and_unread_peers_are_dropped_at_their_next_ping_and_answering_ones_stay(fresh_upstream,
                                                                                         start_relay):
    interval_s = 1.0
    relay = start_relay(fresh_upstream, {"WS_PING_INTERVAL_S": str(interval_s)})
    answering = RawWebSocket(relay.port, "/ws?snapshot=0")
    silent = RawWebSocket(relay.port, "/ws?snapshot=0")  # reads, never answers (a half-open peer)
    unread = RawWebSocket(relay.port, "/ws?snapshot=0")  # never even reads (a stalled one)
    opened_at = time.monotonic()
    pong = PongThread(answering)
    pong.start()
    try:
        assert silent.frame(5)[0] == OPCODE_TEXT  # the snapshot
        # the first ping falls in the second half of the first interval
        assert silent.frame(interval_s + 1)[0] == OPCODE_PING
        pinged_at = time.monotonic()
        # unanswered: at the next ping time the relay says why and closes
        opcode, payload = silent.frame(interval_s + 1.5)
        closed_at = time.monotonic()
        assert opcode == OPCODE_CLOSE and struct.unpack("!H", payload[:2])[0] == 1008
        assert 0.5 * interval_s <= closed_at - pinged_at <= interval_s + 0.75, closed_at - pinged_at
        assert silent.frame(3) is None  # and the TCP connection ends
        # the stalled one went the same way, on the same schedule (1.5 to 2 intervals after it opened)
        wait_until(lambda: clients(relay) == 1, 2 * interval_s + 2, "the unread client dropped")
        assert time.monotonic() - opened_at <= 2 * interval_s + 2
        frames = []
        while (frame := unread.frame(3)) is not None:
            frames.append(frame[0])
        assert frames == [OPCODE_TEXT, OPCODE_PING, OPCODE_CLOSE]
        # the client that answers is still there four intervals on
        wait_until(lambda: pong.pings >= 4, 4 * interval_s + 2, "four pings answered")
        assert not pong.ended and clients(relay) == 1
    finally:
        pong.halt.set()
        pong.join(5)
        for c in (answering, silent, unread):
            c.close()


def test_held_connections_count_against_worker_connections(fresh_upstream, start_relay):
    relay = start_relay(fresh_upstream, {"WORKER_CONNECTIONS": "20"})
    held = open_idle(relay.port, "/ws?snapshot=0", 20)
    extra = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    try:
        extra.sendall(request_bytes(relay.port, "/ws?snapshot=0", True))
        extra.settimeout(1.0)
        with pytest.raises(TimeoutError):  # the worker is full: it does not accept this one yet
            extra.recv(1024)
        held.pop().close()
        extra.settimeout(10)
        assert b" 101 " in extra.recv(1024).split(b"\r\n", 1)[0]  # a slot came free: it is served
    finally:
        extra.close()
        for s in held:
            s.close()


def test_a_held_sse_stream_speaks_http_1_0_to_an_http_1_0_client(fresh_upstream, start_relay):
    """The relay writes /sse itself once it holds the connection: chunked for HTTP/1.1 (as gunicorn
    did, tests/integration/test_sse.py), plain and ended by the close for HTTP/1.0."""
    relay = start_relay(fresh_upstream, {"SSE_KEEPALIVE_S": "0.5"})
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(b"GET /sse?snapshot=0 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b": keep-alive\n\n") < 2 and time.monotonic() < deadline:
            received += s.recv(4096)
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.0 200 OK"
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    assert body.startswith(b"retry: 1000\n\n") and body.count(b": keep-alive\n\n") >= 2, body[:200]
