"""handlers/reader.py takes RFC 6455 messages out of a byte stream however the bytes are split, bounded from the header.

webapp/upstream.py reads upstream frames itself (websocket-client makes the
connection and sends), so its parser has tests of its own: frames are built
by websocket-client's ABNF, the reference encoder.
"""

import random

import pytest
from websocket import ABNF

from handlers.reader import OP_BINARY, OP_CLOSE, OP_CONT, OP_OVERSIZE, OP_PING, OP_TEXT, FrameReader, ProtocolViolation


def frame(opcode, data, fin=1, mask=0):
    return ABNF(fin, 0, 0, 0, opcode, mask, data).format()


def feed_in_pieces(reader, blob, rng):
    out, i = [], 0
    while i < len(blob):
        j = min(len(blob), i + rng.choice([1, 2, 3, 7, 100, 1000, 70_000, 300_000]))
        out += reader.feed(blob[i:j])
        i = j
    return out


@pytest.mark.parametrize("seed", range(20))
def test_messages_come_out_whole_and_in_order_however_the_stream_is_split(seed):
    rng = random.Random(seed)
    expected, blob = [], b""
    for _ in range(60):
        size = rng.choice([0, 1, 125, 126, 127, 65535, 65536, 70000, rng.randrange(0, 3000)])
        data = bytes(rng.randrange(256) for _ in range(300)) * (size // 300 + 1)
        data, mask, kind = data[:size], rng.random() < 0.2, rng.random()
        if kind < 0.6:  # a whole message, text or binary, 7-, 16- or 64-bit length
            op = OP_TEXT if rng.random() < 0.5 else OP_BINARY
            blob += frame(op, data, 1, mask)
            expected.append((op, data))
        elif kind < 0.8:  # a fragmented message with a ping between its fragments
            third = size // 3
            blob += frame(OP_TEXT, data[:third], 0, mask) + frame(OP_PING, b"p")
            blob += frame(OP_CONT, data[third:2 * third], 0, mask) + frame(OP_CONT, data[2 * third:], 1, mask)
            expected += [(OP_PING, b"p"), (OP_TEXT, data)]
        else:
            blob += frame(OP_PING, data[:100], 1, mask)
            expected.append((OP_PING, data[:100]))
    blob += frame(OP_CLOSE, b"\x03\xe8")
    expected.append((OP_CLOSE, b"\x03\xe8"))
    assert feed_in_pieces(FrameReader(), blob, rng) == expected


def test_a_5_mb_frame_in_64_kib_pieces_comes_out_once():
    data = b"y" * 5_000_000
    blob, reader, out = frame(OP_BINARY, data), FrameReader(), []
    for i in range(0, len(blob), 65536):
        out += reader.feed(blob[i:i + 65536])
    assert out == [(OP_BINARY, data)]


@pytest.mark.parametrize("blob", [
    bytes([0xC1, 0x01, 0x41]),  # RSV1 set: no extension was negotiated
    frame(OP_CONT, b"x"),  # a continuation with nothing to continue
    frame(OP_TEXT, b"a", fin=0) + frame(OP_TEXT, b"b"),  # a new message inside a fragmented one
    frame(OP_PING, b"p", fin=0),  # a fragmented control frame
    bytes([0x83, 0x01, 0x3F]),  # a reserved opcode (0x3)
])
def test_what_rfc_6455_forbids_is_a_protocol_violation(blob):
    with pytest.raises(ProtocolViolation):
        FrameReader().feed(blob)


def test_a_frame_over_the_bound_is_skipped_from_its_header_and_the_next_frames_come_out():
    big = b"z" * 1000
    blob = frame(OP_TEXT, b"before") + frame(OP_BINARY, big) + frame(OP_PING, b"p") + frame(OP_TEXT, b"after")
    for seed in range(10):
        out = feed_in_pieces(FrameReader(max_message_bytes=100), blob, random.Random(seed))
        assert out == [(OP_TEXT, b"before"), (OP_OVERSIZE, 1000), (OP_PING, b"p"), (OP_TEXT, b"after")]


def test_a_header_announcing_2_to_the_62_bytes_allocates_nothing_for_its_payload():
    reader = FrameReader(max_message_bytes=4 << 20)
    header = bytes([0x81, 0x7F]) + (1 << 62).to_bytes(8, "big")
    assert reader.feed(header + b"x" * 1000) == [(OP_OVERSIZE, 1 << 62)]
    for _ in range(100):
        assert reader.feed(b"y" * 65536) == []
    assert reader._have == 0 and not reader._chunks and reader._buf == b""
    assert reader._skip == (1 << 62) - 1000 - 100 * 65536


def test_a_fragmented_message_that_grows_past_the_bound_is_skipped_once_with_control_frames_kept():
    blob = (frame(OP_TEXT, b"a" * 60, fin=0) + frame(OP_PING, b"1") + frame(OP_CONT, b"b" * 60, fin=0)
            + frame(OP_CONT, b"c" * 60, fin=0) + frame(OP_PING, b"2") + frame(OP_CONT, b"d", fin=1)
            + frame(OP_TEXT, b"next"))
    for seed in range(10):
        out = feed_in_pieces(FrameReader(max_message_bytes=100), blob, random.Random(seed))
        assert out == [(OP_PING, b"1"), (OP_OVERSIZE, 120), (OP_PING, b"2"), (OP_TEXT, b"next")]


def test_a_64_bit_length_with_its_top_bit_set_is_a_protocol_violation():
    with pytest.raises(ProtocolViolation):
        FrameReader().feed(bytes([0x81, 0x7F]) + (1 << 63).to_bytes(8, "big"))


def test_empty_continuation_frames_hold_no_memory_and_the_message_comes_out_whole():
    """125 M empty continuations (2 bytes each) grew the worker to 1 GB: each took a list slot while the
    byte bound saw nothing (an audit). They add nothing, so nothing is kept for them."""
    reader = FrameReader(max_message_bytes=100)
    assert reader.feed(frame(OP_TEXT, b"a", fin=0) + frame(OP_CONT, b"", fin=0) * 10_000) == []
    assert len(reader._message) == 1
    assert reader.feed(frame(OP_CONT, b"", fin=0) + frame(OP_CONT, b"b")) == [(OP_TEXT, b"ab")]
