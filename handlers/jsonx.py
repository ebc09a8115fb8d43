"""JSON in and out: orjson on the fast path, the stdlib for what orjson refuses."""

import json
import math
import re
from typing import Any

import orjson

MAX_DEPTH = 512
"""Deepest nesting `loads` accepts: anything deeper could not be serialized again."""

# One C pass over the text: digits -> "0", "[" and "{" -> "[", the rest -> " ".
_MASK = bytes(
    0x30 if 0x30 <= b <= 0x39 else 0x5B if b in (0x5B, 0x7B) else 0x20 for b in range(256)
)
# orjson silently turns an integer outside int64/uint64 into a float; such an
# integer has at least 19 digits, so a run that long sends the text to the stdlib.
_LONG_DIGIT_RUN = b"0" * 19


class NotJSON(ValueError):
    """The text is not a JSON document this relay can carry."""


_HIGH_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")


def _reject_constant(name: str) -> Any:
    raise NotJSON(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NotJSON(f"number out of range: {text[:40]}")
    return value


def loads(text: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; integers of any size stay exact; NaN/Infinity, numbers that
    overflow a double and nesting beyond MAX_DEPTH are refused."""
    blob = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    masked = blob.translate(_MASK)
    if _LONG_DIGIT_RUN in masked or _HIGH_SURROGATE_ESCAPE.search(blob):
        # big integers (orjson would round them) and surrogate escapes (orjson
        # keeps a pair as two code points; the stdlib joins it into one character)
        value = _loads_exact(text)
    else:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            # a str with lone surrogates (which the stdlib keeps) or nesting
            # beyond 1024; everything else orjson refuses, the stdlib does too
            value = _loads_exact(text)
    if masked.count(b"[") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise NotJSON(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _loads_exact(text: bytes | bytearray | memoryview | str) -> Any:
    try:
        if not isinstance(text, str):
            # strictly UTF-8: the stdlib alone would guess UTF-16/32 and skip a BOM
            text = bytes(text).decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        if isinstance(text, str) and _HAS_SURROGATE.search(text):
            value = _join_surrogates(value)
        return value
    except (ValueError, RecursionError) as exc:
        raise NotJSON(str(exc)) from None


_HAS_SURROGATE = re.compile("[\ud800-\udfff]" + r"|\\u[dD][89a-fA-F]")


def _joined(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")


def _join_surrogates(value: Any) -> Any:
    """A high and a low surrogate side by side (one escaped, one literal) are one
    character: joined, the value serializes and reads back as itself."""
    if isinstance(value, str):
        return _joined(value)
    if isinstance(value, list):
        return [_join_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_joined(k): _join_surrogates(v) for k, v in value.items()}
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    try:
        orjson.dumps(value)  # fast proof of depth <= 254 in the common case
    except orjson.JSONEncodeError:
        # too deep for orjson, or a big integer or lone surrogate: measure
        return _measured_deeper_than(value, limit)
    return False


def _measured_deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def dumps(value: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # big integers, lone surrogates or nesting beyond orjson's 254 levels
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()
