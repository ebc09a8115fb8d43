"""Frames held for a client before its first write (a /ws resume waiting for the store, an /sse head not out
yet) count towards its byte bound, not only its event bound (webapp/routes/ws.py, webapp/sockets.py)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from handlers.topics import compile_patterns
from webapp.routes.ws import WsClient
from webapp.sockets import StreamClient
from webapp.wire import WireSocket

BOUND = 64 * 1024


def runtime():
    return SimpleNamespace(settings=SimpleNamespace(ws_queue_max_events=10_000, ws_queue_max_bytes=BOUND),
                           hub=SimpleNamespace(delivering=([], 0)))


class Noted:
    """Notes slow() instead of closing."""

    slowed = 0

    def slow(self, n_events: int = 0, frame: bytes | None = None) -> None:
        self.slowed += 1


class HeldWs(Noted, WsClient):
    pass


class PendingSse(Noted, StreamClient):
    pass


def test_frames_held_during_a_resume_past_the_byte_bound_make_the_client_slow():
    """An outside check: 200 events of 100 KB held while the resume waited went out with the snapshot,
    17 MB against a 64 KiB bound, no close."""
    a, b = socket.socketpair()
    try:
        client = HeldWs(None, WireSocket(a), compile_patterns(["*"]), runtime())
        client.held = []
        client.deliver(b"x" * 40_000, 1)
        assert client.slowed == 0
        client.deliver(b"x" * 40_000, 1)  # 80,000 bytes held, two events: past the bytes only
        assert client.slowed == 1
    finally:
        a.close()
        b.close()


def test_frames_pending_before_an_sse_head_past_the_byte_bound_make_the_client_slow():
    a, b = socket.socketpair()
    try:
        client = PendingSse(WireSocket(a), runtime(), compile_patterns(["*"]))
        client.deliver(b"x" * 40_000, 1)
        assert client.slowed == 0
        client.deliver(b"x" * 40_000, 1)
        assert client.slowed == 1
    finally:
        a.close()
        b.close()


def test_the_snapshot_mark_made_while_corked_ends_before_what_was_written_after_it():
    """Only the snapshot's part of the queue is not counted: held frames written after it in the same corked
    write are."""
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        client = HeldWs(None, WireSocket(a), compile_patterns(["*"]), runtime())
        wire = client.wire
        wire.cork()
        wire.write(b"h" * 100)  # the handshake's answer
        client.send(b"s" * 3_000_000)  # the snapshot
        client.snapshot_written()
        wire.write(b"e" * 200_000)  # held events, released after it
        corked = wire.corked_bytes
        wire.uncork()
        client.snapshot_sent_with(corked - (-1 - client.snapshot_end))  # what hold() does
        assert wire.backlog_bytes > 200_000  # the kernel took part of it; the rest is queued
        assert client.queued_bytes() == 200_000  # the snapshot's part is not counted, the events' is
    finally:
        wire.abandon()
        a.close()
        b.close()
