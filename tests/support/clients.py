"""Real clients of the relay: a WebSocket client, a bare-socket WebSocket client that can stop
reading, and a Server-Sent Events reader. Every wait has a deadline."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsClient:
    """A /ws client that files what it receives: the snapshot, every event in order, other frames.

    `events` holds the snapshot's events followed by those of every
    `events` frame, which is the stream the contract promises to be
    gap-free and duplicate-free. Other frames (subscribed, pong, error,
    closing) queue up for `next_frame`.
    """

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, open_timeout_s: float = 10) -> None:
        self.url = url
        self.conn = connect(
            url,
            legacy=True,
            proxy=None,
            compression=None,
            ping_interval=None,
            max_size=None,
            open_timeout=open_timeout_s,
            close_timeout=3,
            additional_headers=dict(headers or {}),
        )
        self.snapshot: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self._others: deque[dict[str, Any]] = deque()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = False

    # -- receiving ----------------------------------------------------------

    def _read(self, timeout_s: float) -> dict[str, Any]:
        """Read and file one frame. Raises TimeoutError, or ConnectionClosed once closed."""
        try:
            raw = self.conn.recv(timeout=timeout_s)
        except ConnectionClosed as exc:
            self.closed = True
            if exc.rcvd is not None:
                self.close_code, self.close_reason = exc.rcvd.code, exc.rcvd.reason
            raise
        assert isinstance(raw, str), f"the relay must send JSON text frames, got a binary frame {raw[:100]!r}"
        frame = json.loads(raw)
        assert isinstance(frame, dict) and "type" in frame, f"frame without a type: {raw[:300]}"
        self.frames.append(frame)
        if frame["type"] == "snapshot" and self.snapshot is None:
            assert not self.events, "snapshot after events"
            self.snapshot = frame
            self.events.extend(frame["events"])
        elif frame["type"] == "events":
            assert self.snapshot is not None, f"events frame before the snapshot: {raw[:300]}"
            self.events.extend(frame["events"])
        else:
            self._others.append(frame)
        return frame

    def read_snapshot(self, timeout_s: float = 10) -> dict[str, Any]:
        """The first frame, which must be the snapshot."""
        assert self.snapshot is None and not self.frames, "snapshot already read"
        frame = self._read(timeout_s)
        assert frame["type"] == "snapshot", f"the first frame must be the snapshot, got {frame!r}"
        return frame

    def wait_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Read frames until `done()` holds; fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}; {self.describe()}"
                )
            try:
                self._read(min(remaining, 1.0))
            except TimeoutError:
                continue
            except ConnectionClosed:
                raise AssertionError(
                    f"connection closed (code {self.close_code}, {self.close_reason!r}) "
                    f"while waiting for {what}; {self.describe()}"
                ) from None

    def wait_for_events(self, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        """Wait until `count` events in total (snapshot included) have arrived."""
        self.wait_until(lambda: len(self.events) >= count, timeout_s, f"{count} events")
        return self.events

    def wait_for_seq(self, seq: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        """Wait until an event with seq >= `seq` has arrived."""
        self.wait_until(
            lambda: bool(self.events) and self.events[-1]["seq"] >= seq, timeout_s, f"event seq {seq}"
        )
        return self.events

    def next_frame(self, kind: str, timeout_s: float = 10) -> dict[str, Any]:
        """The oldest not-yet-taken non-event frame of type `kind` (events keep being filed)."""

        def find() -> dict[str, Any] | None:
            for frame in self._others:
                if frame["type"] == kind:
                    self._others.remove(frame)
                    return frame
            return None

        found: list[dict[str, Any]] = []

        def done() -> bool:
            frame = find()
            if frame is not None:
                found.append(frame)
            return bool(found)

        self.wait_until(done, timeout_s, f"a {kind!r} frame")
        return found[0]

    def expect_close(self, timeout_s: float = 10) -> int | None:
        """Read (and file) frames until the relay closes the connection; return the close code."""
        deadline = time.monotonic() + timeout_s
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {timeout_s}s; {self.describe()}")
            try:
                self._read(min(remaining, 1.0))
            except TimeoutError:
                continue
            except ConnectionClosed:
                break
        return self.close_code

    def pending_frames(self) -> list[dict[str, Any]]:
        return list(self._others)

    def describe(self) -> str:
        last = self.events[-1]["seq"] if self.events else None
        return (
            f"{self.url}: {len(self.events)} events (last seq {last}), "
            f"untaken frames {list(self._others)[:5]!r}"
        )

    # -- sending ------------------------------------------------------------

    def send_json(self, message: Any) -> None:
        self.conn.send(json.dumps(message))

    def send(self, data: str | bytes) -> None:
        self.conn.send(data)

    def close(self) -> None:
        self.conn.close()


def upgrade_headers() -> dict[str, str]:
    """The headers of a WebSocket opening handshake (RFC 6455 §4.1)."""
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame: FIN, `opcode`, the payload's length in the shortest form, masked."""
    mask = os.urandom(4)
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536
                                                else bytes([0x80 | 127]) + struct.pack("!Q", n))
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass
class RawClose:
    """What a RawWsClient saw: its text messages in order, then the close (if any)."""

    texts: list[str] = field(default_factory=list)
    code: int | None = None
    reason: str = ""
    got_close_frame: bool = False


class RawWsClient:
    """A WebSocket client on a bare socket with a small receive buffer.

    It does the opening handshake by hand and then reads nothing until told
    to, so the relay's send path backs up the way it does for a stalled
    consumer on a real network.
    """

    def __init__(self, host: str, port: int, target: str, *, rcvbuf: int = 4096, timeout_s: float = 10) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so the advertised window is small from the first segment.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout_s)
        self.sock.connect((host, port))
        headers = upgrade_headers()
        key = headers["Sec-WebSocket-Key"]
        request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        self.sock.sendall((request + "\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"connection closed during the handshake: {head!r}")
            head += chunk
        head, self._buffer = head.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        assert status_line.split()[1] == "101", f"handshake refused: {head!r}"
        answered = {
            name.strip().lower(): value.strip()
            for name, value in (line.split(":", 1) for line in header_lines)
        }
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert answered.get("sec-websocket-accept") == accept, f"bad handshake answer: {head!r}"

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(262144)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _take(self, size: int, deadline: float) -> bytes | None:
        while len(self._buffer) < size:
            if not self._fill(deadline):
                return None
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def read_until_close(self, timeout_s: float = 30) -> RawClose:
        """Read every frame until the close frame (or the end of the stream)."""
        deadline = time.monotonic() + timeout_s
        result = RawClose()
        try:
            return self._read_frames(result, deadline)
        except TimeoutError:
            last = result.texts[-1][:200] if result.texts else None
            raise AssertionError(
                f"no close from the relay within {timeout_s}s: read {len(result.texts)} messages, "
                f"the last one starting {last!r}"
            ) from None

    def read_until(self, done: Callable[[list[str]], bool], timeout_s: float = 30) -> RawClose:
        """Read frames until `done(texts)` holds (or the relay closes); texts are every message so far."""
        deadline = time.monotonic() + timeout_s
        result = RawClose()
        try:
            return self._read_frames(result, deadline, done)
        except TimeoutError:
            raise AssertionError(f"condition not met within {timeout_s}s: read {len(result.texts)} messages, "
                                 f"the last ones {[t[:120] for t in result.texts[-3:]]!r}") from None

    def _read_frames(self, result: RawClose, deadline: float,
                     done: Callable[[list[str]], bool] | None = None) -> RawClose:
        message = bytearray()
        while True:
            try:
                header = self._take(2, deadline)
            except ConnectionResetError:
                return result
            if header is None:
                return result  # TCP ended without a close frame
            opcode = header[0] & 0x0F
            assert not header[1] & 0x80, "frames from the server must not be masked"
            length = header[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._take(2, deadline) or b"\0\0")[0]
            elif length == 127:
                length = struct.unpack("!Q", self._take(8, deadline) or b"\0" * 8)[0]
            payload = self._take(length, deadline) if length else b""
            if payload is None:
                return result
            if opcode == 0x8:
                result.got_close_frame = True
                if len(payload) >= 2:
                    result.code = struct.unpack("!H", payload[:2])[0]
                    result.reason = payload[2:].decode("utf-8", "replace")
                self._send_frame(0x8, payload[:2])
                return result
            if opcode in (0x1, 0x2, 0x0):
                message += payload
                if header[0] & 0x80:  # FIN
                    result.texts.append(message.decode())
                    message = bytearray()
                    if done is not None and done(result.texts):
                        return result
            # pings (0x9) and pongs (0xA) carry nothing the tests look at

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        try:
            self.sock.sendall(masked_frame(opcode, payload))
        except OSError:
            pass  # the relay may have dropped the TCP connection right after its close frame

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """One whole masked frame, of any length (0x1 text, 0x9 ping); raises if the relay has gone."""
        self.sock.sendall(masked_frame(opcode, payload))

    def close(self) -> None:
        self.sock.close()


@dataclass
class SseMessage:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseClient:
    """A Server-Sent Events reader over http.client (chunked or not), one message at a time."""

    def __init__(
        self, host: str, port: int, target: str, *, headers: Mapping[str, str] | None = None, timeout_s: float = 10
    ) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        self.conn.request("GET", target, headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.comments: list[str] = []
        self.messages: list[SseMessage] = []
        self.ended = False
        self._buffer = b""

    def body_json(self) -> Any:
        """For a refused request: its (JSON) body."""
        return json.loads(self.response.read())

    def _lines(self, deadline: float):
        """Yield complete lines; raises TimeoutError at the deadline."""
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                yield line.rstrip(b"\r").decode("utf-8")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            assert self.conn.sock is not None, "stream already closed"
            self.conn.sock.settimeout(remaining)
            chunk = self.response.read1(65536)
            if not chunk:
                self.ended = True
                return
            self._buffer += chunk

    def next_message(self, timeout_s: float = 10) -> SseMessage:
        """The next dispatched message; comments (keep-alives) are filed in `comments`."""
        deadline = time.monotonic() + timeout_s
        fields: dict[str, list[str]] = {}
        try:
            for line in self._lines(deadline):
                if line == "":
                    if "data" in fields:
                        message = SseMessage(
                            event=fields.get("event", ["message"])[-1],
                            data="\n".join(fields["data"]),
                            id=fields["id"][-1] if "id" in fields else None,
                        )
                        self.messages.append(message)
                        return message
                    fields = {}
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:])
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        except TimeoutError:
            raise AssertionError(
                f"no SSE message within {timeout_s}s (after {len(self.messages)} messages)"
            ) from None
        raise AssertionError(f"SSE stream ended after {len(self.messages)} messages")

    def events(self, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        """The next `count` messages, which must all be `event: event`; their parsed data."""
        out = []
        for _ in range(count):
            message = self.next_message(timeout_s)
            assert message.event == "event", f"expected an event message, got {message!r}"
            event = message.json()
            # `<epoch>:<seq>`
            assert message.id == str(event["seq"]), f"id {message.id!r} is not the seq of {event!r}"
            out.append(event)
        return out

    def wait_for_comment(self, timeout_s: float) -> str:
        """Wait for a comment line (a keep-alive); lines of messages that come first are dropped."""
        deadline = time.monotonic() + timeout_s
        seen = len(self.comments)
        try:
            for _ in self._lines_dispatching(deadline):
                if len(self.comments) > seen:
                    return self.comments[-1]
        except TimeoutError:
            pass
        raise AssertionError(f"no SSE comment (keep-alive) within {timeout_s}s")

    def _lines_dispatching(self, deadline: float):
        for line in self._lines(deadline):
            if line.startswith(":"):
                self.comments.append(line[1:])
            yield line

    def read_to_end(self, timeout_s: float) -> bool:
        """Read until the server ends the stream; True if it did within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        try:
            for _ in self._lines(deadline):
                pass
        except TimeoutError:
            return False
        except (ConnectionError, http.client.HTTPException):
            self.ended = True  # ended abruptly, still ended
        return self.ended

    def close(self) -> None:
        self.conn.close()
