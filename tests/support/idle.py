"""Raw idle clients: many /ws or /sse connections from one thread, and one WebSocket read frame by frame.

The library clients (support/clients.py) run a thread per connection; thousands of idle
connections need one selector instead. `RawWebSocket` sees every frame the relay sends,
pings included, and answers only when told, which is what a half-open or slow peer looks
like from the server.
"""

from __future__ import annotations

import base64
import os
import selectors
import socket
import struct
import time

HANDSHAKE = (
    "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SSE_REQUEST = "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"


def request_bytes(port: int, target: str, websocket: bool) -> bytes:
    template = HANDSHAKE if websocket else SSE_REQUEST
    return template.format(target=target, port=port, key=base64.b64encode(os.urandom(16)).decode()).encode()


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask), payload under 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def open_idle(port: int, target: str, n: int, *, websocket: bool = True, timeout_s: float = 60) -> list[socket.socket]:
    """`n` connections whose handshake (101, or 200 for /sse) completed; they are not read afterwards."""
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    pending: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + timeout_s
    expect = b" 101 " if websocket else b" 200 "
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(request_bytes(port, target, websocket))
            s.setblocking(False)
            pending[s] = b""
            sel.register(s, selectors.EVENT_READ)
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} of {n} handshakes not answered within {timeout_s}s")
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                data = s.recv(65536)
                if not data:
                    raise AssertionError("the relay closed a connection during its handshake")
                pending[s] += data
                if b"\r\n\r\n" in pending[s]:
                    head = pending.pop(s)
                    assert expect in head.split(b"\r\n", 1)[0], head[:200]
                    sel.unregister(s)
                    done.append(s)
    except BaseException:
        for s in list(pending) + done:
            s.close()
        raise
    finally:
        sel.close()
    return done


class RawWebSocket:
    """One WebSocket client that reads the relay's frames one by one and answers nothing by itself."""

    def __init__(self, port: int, target: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(request_bytes(port, target, True))
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "closed during the handshake"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head[:200]

    def frame(self, timeout_s: float) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame; None when the relay closed the TCP connection."""
        deadline = time.monotonic() + timeout_s
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no frame within {timeout_s}s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buffer += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        opcode, n, head = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, head = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, head = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < head + n:
            return None
        self.buffer = buf[head + n:]
        return opcode, buf[head:head + n]

    def pong(self, payload: bytes) -> None:
        self.sock.sendall(masked(0xA, payload))

    def close(self) -> None:
        self.sock.close()
