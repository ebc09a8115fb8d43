"""Pings and pongs read from raw client bytes: only whole, final, masked, small control frames pass."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Ping, Pong

from handlers.control import OP_PING, OP_PONG, PING_FRAME, PONG_FRAME, control_frames, pong_for

KEY = b"\x37\xfa\x21\x3d"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bytes | None = KEY,
          length: int | None = None) -> bytes:
    """A client frame, built by hand so that it can also be wrong."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    flag = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([flag | n])
    elif n < 65536:
        head += bytes([flag | 126]) + struct.pack("!H", n)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_pong_without_payload_is_recognised():
    assert control_frames(frame(OP_PONG)) == [(OP_PONG, b"")]


def test_a_ping_with_payload_is_unmasked():
    assert control_frames(frame(OP_PING, b"hello, relay")) == [(OP_PING, b"hello, relay")]


def test_several_control_frames_in_one_read_come_out_in_order():
    data = frame(OP_PONG, b"1") + frame(OP_PING, b"22") + frame(OP_PONG)
    assert control_frames(data) == [(OP_PONG, b"1"), (OP_PING, b"22"), (OP_PONG, b"")]


def test_a_payload_of_exactly_125_bytes_is_still_a_control_frame():
    payload = bytes(range(125))
    assert control_frames(frame(OP_PING, payload)) == [(OP_PING, payload)]


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="nothing"),
    pytest.param(frame(OP_PONG)[:5], id="a partial header"),
    pytest.param(frame(OP_PING, b"abcdef")[:-1], id="a payload cut short"),
    pytest.param(frame(OP_PING, b"x", fin=False), id="a fragmented ping"),
    pytest.param(frame(OP_PONG, fin=False), id="a fragmented pong"),
    pytest.param(frame(OP_PING, b"x" * 126), id="a ping over 125 bytes (16-bit length)"),
    pytest.param(frame(OP_PING, b"x" * 70000), id="a ping over 125 bytes (64-bit length)"),
    pytest.param(frame(OP_PING, length=(1 << 62)), id="a 2^62-byte ping announced"),
    pytest.param(frame(OP_PING, b"x", mask=None), id="an unmasked ping"),
    pytest.param(frame(OP_PONG, mask=None) + b"\x00\x00\x00\x00", id="an unmasked pong padded to look whole"),
    pytest.param(frame(OP_PONG, rsv=1), id="RSV1"),
    pytest.param(frame(OP_PONG, rsv=2), id="RSV2"),
    pytest.param(frame(OP_PING, rsv=4), id="RSV3"),
    pytest.param(frame(0x8, struct.pack("!H", 1000)), id="a close"),
    pytest.param(frame(0x1, b"{}"), id="a text frame"),
    pytest.param(frame(0x2, b"\x00"), id="a binary frame"),
    pytest.param(frame(0x0, b"x"), id="a continuation"),
    pytest.param(frame(0xB), id="a reserved control opcode"),
    pytest.param(frame(0x3), id="a reserved data opcode"),
    pytest.param(frame(OP_PONG) + frame(0x1, b"{}"), id="a pong then a text frame"),
    pytest.param(frame(OP_PONG) + frame(OP_PING)[:3], id="a pong then half a ping"),
])
def test_anything_but_whole_masked_pings_and_pongs_is_left_to_the_full_protocol(data):
    assert control_frames(data) is None


def test_the_server_frames_are_what_wsproto_would_send():
    server = Connection(ConnectionType.SERVER)
    assert PING_FRAME == server.send(Ping())
    assert PONG_FRAME == server.send(Pong())
    assert pong_for(b"abc") == server.send(Pong(b"abc"))
    assert pong_for(b"") == PONG_FRAME


@given(st.sampled_from([OP_PING, OP_PONG]), st.binary(max_size=125), st.binary(min_size=4, max_size=4))
def test_any_ping_or_pong_reads_as_wsproto_reads_it(opcode, payload, key):
    data = frame(opcode, payload, mask=key)
    server = Connection(ConnectionType.SERVER)
    server.receive_data(data)
    [event] = list(server.events())
    assert control_frames(data) == [(opcode, bytes(event.payload))]


@given(st.binary(max_size=300))
def test_whatever_it_accepts_wsproto_reads_as_the_same_pings_and_pongs(data):
    frames = control_frames(data)
    if frames is None:
        return
    server = Connection(ConnectionType.SERVER)
    server.receive_data(data)
    events = list(server.events())
    assert [(OP_PING if isinstance(e, Ping) else OP_PONG, bytes(e.payload)) for e in events] == frames
