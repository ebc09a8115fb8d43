"""An idle client's pings and pongs read from raw bytes, without a frame protocol object.

A held /ws connection (webapp/conn.py) mostly receives the pong to the server's ping
every 25 s. Through wsproto, reading that pong cost 6.5 µs of Python (receive_data, the
frame decoder's generators, the event objects) and sending the ping 3 µs; here they cost
0.8 µs and a constant. With the socket calls around them, a ping cost a worker 32.9 µs of
CPU before and 17.9 µs after (bench/idletax.py: 19,000 clients pinged every 5 s).
`control_frames` recognises the one common case, a read that holds exactly whole,
final, masked ping or pong frames, and hands back their payloads; for anything
else (a data frame, a close, a partial or fragmented frame, a reserved bit, an
unmasked frame, a payload over 125 bytes) it answers None and the caller gives the
bytes to the full protocol, which decides (and refuses what RFC 6455 forbids).
"""

from __future__ import annotations

OP_PING = 0x9
OP_PONG = 0xA
MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5

PING_FRAME = b"\x89\x00"  # a server's ping without payload (server frames are not masked)
PONG_FRAME = b"\x8a\x00"


def control_frames(data: bytes) -> list[tuple[int, bytes]] | None:
    """(opcode, unmasked payload) for each frame of `data` when it is nothing but whole, final,
    masked client ping/pong frames without reserved bits; None otherwise (nothing consumed)."""
    frames = []
    at, end = 0, len(data)
    while at < end:
        if end - at < 6:
            return None  # a header and a masking key at least
        first, second = data[at], data[at + 1]
        if first & 0xF0 != 0x80:  # FIN set, RSV1-3 clear
            return None
        opcode = first & 0x0F
        if opcode not in (OP_PING, OP_PONG):
            return None
        if not second & 0x80:  # a client frame must be masked
            return None
        length = second & 0x7F
        if length > MAX_CONTROL_PAYLOAD:  # 126 and 127 announce extended lengths: never a control frame's
            return None
        body = at + 6
        if body + length > end:
            return None  # the frame continues in a later read
        frames.append((opcode, unmask(data[at + 2:body], data[body:body + length])))
        at = body + length
    return frames or None


def unmask(key: bytes, payload: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def pong_for(payload: bytes) -> bytes:
    """The server's (unmasked) pong answering a ping that carried `payload` (≤ 125 bytes)."""
    if not payload:
        return PONG_FRAME
    return bytes((0x8A, len(payload))) + payload
