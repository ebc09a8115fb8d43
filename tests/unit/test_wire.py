"""WireSocket writes whole frames in order, whoever writes and however full the socket is."""

import socket as stdlib_socket

import gevent
from gevent import socket

from webapp.wire import WireSocket


def tight_pair():
    a, b = socket.socketpair()
    a.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4096)
    b.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    return a, b


def read_exactly(sock, n):
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(65536)
        assert chunk, "peer closed early"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def test_a_write_that_fits_goes_out_at_once_without_a_writer():
    a, b = tight_pair()
    wire = WireSocket(a)
    wire.write(b"hello", 1)
    assert wire._writer is None and wire.backlog_bytes == 0
    assert b.recv(10) == b"hello"


def test_frames_stay_whole_and_ordered_under_backpressure_with_a_second_writer():
    a, b = tight_pair()
    wire = WireSocket(a)
    frames = [bytes([65 + i % 26]) * (1000 + i) for i in range(300)]
    expected = []
    for i, frame in enumerate(frames):
        wire.write(frame, 1)
        expected.append(frame)
        if i % 7 == 0:  # simple-websocket's reader answering a ping goes through send()
            pong = b"<pong %d>" % i
            wire.send(pong)
            expected.append(pong)
    assert wire.backlog_bytes > 0 and wire.backlog_weight > 0, "the socket should have filled"
    total = sum(map(len, expected))
    reader = gevent.spawn(read_exactly, b, total)
    assert reader.get(timeout=10) == b"".join(expected)
    assert wire.wait_drained(5)
    assert (wire.backlog_bytes, wire.backlog_weight) == (0, 0)


def test_discarding_the_backlog_keeps_the_frame_in_flight_whole():
    a, b = tight_pair()
    wire = WireSocket(a)
    big = b"x" * 200_000
    wire.write(big, 1)
    wire.write(b"y" * 1000, 1)
    gevent.sleep(0)  # the writer starts on the big frame
    wire.discard_backlog()
    wire.write(b"END", 0)
    received = gevent.spawn(read_exactly, b, 200_003).get(timeout=10)
    assert received == big + b"END"


def test_a_closed_peer_marks_the_wire_broken_and_later_writes_are_dropped():
    a, b = tight_pair()
    wire = WireSocket(a)
    b.close()
    for _ in range(50):
        wire.write(b"z" * 10_000, 1)
        gevent.sleep(0)
    assert wire.wait_drained(5)
    assert wire.broken
    assert (wire.backlog_bytes, wire.backlog_weight) == (0, 0)


def test_discarding_before_the_writer_ran_finishes_a_partly_sent_frame_and_can_keep_replies():
    a, b = tight_pair()
    wire = WireSocket(a)
    big = b"x" * 200_000
    wire.write(big, 1)  # part of it went out at once; the rest waits for a writer that has not run yet
    wire.write(b"y" * 1000, 1)
    wire.write(b"<reply>", 0)
    wire.write(b"z" * 1000, 2)
    assert wire.discard_backlog(events_only=True) == 2
    wire.write(b"END", 0)
    received = gevent.spawn(read_exactly, b, 200_010).get(timeout=10)
    assert received == big + b"<reply>END"
    assert wire.wait_drained(5) and (wire.backlog_bytes, wire.backlog_weight) == (0, 0)


def test_the_send_buffer_is_capped_only_where_the_kernel_would_hold_more_than_half_the_bound():
    from webapp.wire import send_buffer_cap

    four_mib = 4 * 1024 * 1024
    assert send_buffer_cap(8 * 1024 * 1024, four_mib) is None  # the default: the kernel's growth is within it
    assert send_buffer_cap(4 * 1024 * 1024, four_mib) == 1024 * 1024
    assert send_buffer_cap(200_000, four_mib) == 256 * 1024  # the floor, for a fast reader's big snapshot
    assert send_buffer_cap(200_000, None) == 256 * 1024  # tcp_wmem unknown: capped
    assert send_buffer_cap(200_000, 256 * 1024) is None  # a kernel that never grows past it
