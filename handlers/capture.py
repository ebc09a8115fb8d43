"""Feed captures as data: one JSON line per upstream frame with its receive time, and the pace to replay them at.

A line is `{"ts": MS, ...}` with exactly one of:

- `"frame": VALUE` — a text frame that was compact JSON, stored as its value
  (readable, and written back it is the very bytes received);
- `"text": STR` — any other text frame, verbatim;
- `"binary": BASE64` — a binary frame.

`ts` is the receive time in milliseconds since the Unix epoch.
"""

import base64
import binascii
from dataclasses import dataclass
from typing import Iterable

from handlers import jsonx


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    ts: int  # receive time, ms since the Unix epoch
    payload: bytes
    binary: bool = False

    @property
    def text(self) -> str:
        """The payload as a text frame carries it (invalid UTF-8, rare, replaced)."""
        return self.payload.decode("utf-8", "replace")


class CaptureError(ValueError):
    """A capture line that cannot be read back."""


def capture_line(payload: bytes | str, binary: bool, recv_ms: int) -> bytes:
    """One frame as a capture line (newline included)."""
    blob = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    if binary:
        return jsonx.dumps({"ts": recv_ms, "binary": base64.b64encode(blob).decode("ascii")}) + b"\n"
    try:
        value = jsonx.loads(blob)
    except jsonx.NotJSON:
        pass
    else:
        if jsonx.dumps(value) == blob:
            return b'{"ts":%d,"frame":%b}\n' % (recv_ms, blob)
    return jsonx.dumps({"ts": recv_ms, "text": blob.decode("utf-8", "replace")}) + b"\n"


def parse_capture_line(line: bytes | str, number: int = 0) -> CapturedFrame | None:
    """A capture line back as a frame; None for a blank line. Raises CaptureError naming line `number`."""
    if not line.strip():
        return None
    try:
        record = jsonx.loads(line)
    except jsonx.NotJSON as exc:
        raise CaptureError(f"line {number}: not JSON ({exc})") from None
    if not isinstance(record, dict) or type(record.get("ts")) is not int:
        raise CaptureError(f"line {number}: expected an object with an integer 'ts'")
    kinds = [k for k in ("frame", "text", "binary") if k in record]
    if len(kinds) != 1:
        raise CaptureError(f"line {number}: expected exactly one of 'frame', 'text', 'binary'")
    kind, value = kinds[0], record[kinds[0]]
    if kind == "frame":
        return CapturedFrame(record["ts"], jsonx.dumps(value))
    if not isinstance(value, str):
        raise CaptureError(f"line {number}: '{kind}' must be a string")
    if kind == "text":
        return CapturedFrame(record["ts"], value.encode("utf-8", "replace"))
    try:
        return CapturedFrame(record["ts"], base64.b64decode(value, validate=True), binary=True)
    except binascii.Error:
        raise CaptureError(f"line {number}: 'binary' is not base64") from None


def read_capture(lines: Iterable[bytes | str]) -> list[CapturedFrame]:
    """Every frame of a capture, in file order."""
    frames = []
    for number, line in enumerate(lines, 1):
        frame = parse_capture_line(line, number)
        if frame is not None:
            frames.append(frame)
    return frames


def replay_offsets_s(frames: list[CapturedFrame], speed: float) -> list[float]:
    """When to send each frame, in seconds after the first: the recorded gaps divided by `speed`.

    A clock that went backwards between two lines counts as no gap.
    """
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    offsets, at, previous = [], 0.0, None
    for frame in frames:
        if previous is not None:
            at += max(0, frame.ts - previous) / 1000.0 / speed
        offsets.append(at)
        previous = frame.ts
    return offsets
