"""RFC 6455 messages out of a byte stream, sans I/O: `FrameReader.feed(bytes)` returns the messages completed.

The upstream consumer (webapp/upstream.py) only pumps the bytes of each
`recv` through it. The length in a frame's header is checked against the
bound before a byte of payload is gathered (the shape of `websockets`'
`Frame.parse`, which raises PayloadTooBig before `read_exact(length)`): a
data frame, or a fragmented message, announced above `max_message_bytes` is
not assembled; its payload is discarded as it streams past, and one
`(OP_OVERSIZE, n)` item says so. Memory stays bounded by the bound plus one
read, whatever length a header claims (2^62 included).
"""

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OP_OVERSIZE = -1  # not an RFC opcode: a message over the bound was skipped; the payload is its length (int)


class ProtocolViolation(Exception):
    """The peer sent something RFC 6455 forbids (the connection must be dropped)."""


def _unmask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class FrameReader:
    """`feed(chunk)` returns the (opcode, payload) items completed by it.

    Fragments are joined into one message; control frames come out as they
    arrive, even between fragments. A frame larger than what is buffered is
    gathered in a list and joined once, so a big frame costs one copy.
    """

    def __init__(self, max_message_bytes: int = 1 << 62) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = b""
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 2  # bytes that must be buffered before parsing can progress
        self._message: list[bytes] = []
        self._message_bytes = 0
        self._message_opcode = 0
        self._skip = 0  # payload bytes of an oversized frame still to discard
        self._skipping_message = False  # the rest of a fragmented message is discarded too

    def feed(self, chunk: bytes) -> list[tuple[int, bytes | int]]:
        if self._skip:
            if len(chunk) <= self._skip:
                self._skip -= len(chunk)
                return []
            chunk = chunk[self._skip:]
            self._skip = 0
        self._chunks.append(chunk)
        self._have += len(chunk)
        if self._have < self._need:
            return []
        buf = self._buf + b"".join(self._chunks) if self._buf else (
            self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks))
        self._chunks.clear()
        out: list[tuple[int, bytes | int]] = []
        pos, end = 0, len(buf)
        need = 2
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = pos + 2
            if n == 126:
                if end - head < 2:
                    need = 4
                    break
                n = (buf[head] << 8) | buf[head + 1]
                head += 2
            elif n == 127:
                if end - head < 8:
                    need = 10
                    break
                n = int.from_bytes(buf[head:head + 8], "big")
                if n >> 63:
                    raise ProtocolViolation("a 64-bit frame length with its most significant bit set")
                head += 8
            key = None
            if b1 & 0x80:  # servers must not mask, but a masked frame is still readable
                if end - head < 4:
                    need = head - pos + 4
                    break
                key = buf[head:head + 4]
                head += 4
            opcode = b0 & 0x0F
            if opcode < 0x8 and (self._skipping_message or self._message_bytes + n > self.max_message_bytes):
                # checked from the header: the payload is never gathered
                self._check(b0)
                self._oversize(b0, n, out)
                if end - head < n:
                    self._skip = n - (end - head)
                    pos = end
                    break
                pos = head + n
                continue
            if end - head < n:
                need = head - pos + n
                break
            payload = buf[head:head + n]
            pos = head + n
            if key is not None:
                payload = _unmask(payload, key)
            self._frame(b0, payload, out)
        self._buf = buf[pos:] if pos < end else b""
        self._have = len(self._buf)
        self._need = need
        return out

    def _oversize(self, b0: int, n: int, out: list) -> None:
        """Skip this frame's payload; a fragmented message is skipped to its last fragment, reported once."""
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode == OP_CONT and not (self._message or self._skipping_message):
            raise ProtocolViolation("a continuation frame outside a fragmented message")
        if opcode != OP_CONT and (self._message or self._skipping_message):
            raise ProtocolViolation("a new message inside a fragmented one")
        if not self._skipping_message:
            out.append((OP_OVERSIZE, self._message_bytes + n))
        self._message, self._message_bytes = [], 0
        self._skipping_message = not fin

    def _check(self, b0: int) -> None:
        if b0 & 0x70:
            raise ProtocolViolation("a frame with RSV bits set: no extension was negotiated")
        if b0 & 0x0F not in (OP_CONT, OP_TEXT, OP_BINARY):
            raise ProtocolViolation(f"unknown opcode {b0 & 0x0F:#x}")

    def _frame(self, b0: int, payload: bytes, out: list) -> None:
        if b0 & 0x70:
            raise ProtocolViolation("a frame with RSV bits set: no extension was negotiated")
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise ProtocolViolation(f"unknown opcode {opcode:#x}")
            if not fin or len(payload) > 125:
                raise ProtocolViolation("a fragmented or oversized control frame")
            out.append((opcode, payload))
        elif opcode == OP_CONT:
            if not self._message:
                raise ProtocolViolation("a continuation frame outside a fragmented message")
            if payload:  # an empty one adds nothing but a list slot: 125 M of them were 1 GB (an audit)
                self._message.append(payload)
                self._message_bytes += len(payload)
            if fin:
                out.append((self._message_opcode, b"".join(self._message)))
                self._message, self._message_bytes = [], 0
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._message:
                raise ProtocolViolation("a new message inside a fragmented one")
            if fin:
                out.append((opcode, payload))
            else:
                self._message_opcode, self._message, self._message_bytes = opcode, [payload], len(payload)
        else:
            raise ProtocolViolation(f"unknown opcode {opcode:#x}")
