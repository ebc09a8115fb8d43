"""Upstream frames to event elements: JSON object/array/scalar, raw text, base64 binary."""

import base64
from dataclasses import dataclass
from typing import Any

from handlers import jsonx


@dataclass(frozen=True, slots=True)
class Element:
    """One future event's data; `raw` when the frame was not JSON."""

    data: Any
    raw: bool = False


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
        return ParsedFrame((Element(base64.b64encode(blob).decode("ascii"), raw=True),), "binary frame")
    try:
        value = jsonx.loads(payload)
    except jsonx.NotJSON as exc:
        return ParsedFrame((Element(_as_text(payload), raw=True),), f"not JSON: {exc}")
    if isinstance(value, list):
        return ParsedFrame(tuple(Element(item) for item in value))
    return ParsedFrame((Element(value),))


def _as_text(payload: bytes | str) -> str:
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    # a str may carry lone surrogates; keep it encodable
    return payload.encode("utf-8", "replace").decode("utf-8")
