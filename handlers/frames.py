"""Upstream frames to event elements: JSON object/array/scalar, raw text, base64 binary."""

import base64
from dataclasses import dataclass
from typing import Any

from handlers import jsonx


@dataclass(frozen=True, slots=True)
class RawText:
    """A frame that was not JSON (or a binary frame, as base64): one element, its text the event's data,
    sent with `raw: true`."""

    text: str


# An element, one future event's data: a JSON value as parsed, or a RawText. Not wrapped one by one: a
# 3 MB frame of a million elements took 0.62 s to wrap (25 ms to parse), and that one piece of work,
# before its events could be numbered in parts, held a clustered leader's loop past its lease (CI).
Element = Any


@dataclass(frozen=True, slots=True)
class ParsedFrame:
    """What one frame yields: elements in order, and diagnostics as data."""

    elements: tuple[Element, ...]
    parse_error: str | None = None
    oversize: bool = False


def parse_frame(payload: bytes | str, *, binary: bool, max_bytes: int) -> ParsedFrame:
    """Turn one upstream frame into elements; never raises on any input."""
    size = len(payload) if isinstance(payload, bytes) else len(payload.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return ParsedFrame((), f"frame of {size} bytes exceeds {max_bytes}", oversize=True)
    if binary:
        blob = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass")
        return ParsedFrame((RawText(base64.b64encode(blob).decode("ascii")),), "binary frame")
    try:
        value = jsonx.loads(payload)
    except jsonx.NotJSON as exc:
        return ParsedFrame((RawText(_as_text(payload)),), f"not JSON: {exc}")
    if isinstance(value, list):
        return ParsedFrame(tuple(value))
    return ParsedFrame((value,))


def _as_text(payload: bytes | str) -> str:
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    # a str may carry lone surrogates; keep it encodable
    return payload.encode("utf-8", "replace").decode("utf-8")
