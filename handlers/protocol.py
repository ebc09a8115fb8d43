"""The /ws and /sse wire formats as data: client actions in, server messages out."""

import struct
from dataclasses import dataclass
from typing import Any, Iterable

from handlers import jsonx
from handlers.conflate import RateError, parse_max_hz
from handlers.events import Event
from handlers.topics import PatternError, parse_patterns

# -- client -> server ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    """A usable client frame: subscribe, unsubscribe (with patterns) or ping.

    `sets_rate`: the frame carried `max_hz` (§12), whose value (None = every event) is `max_hz`.
    """

    kind: str
    topics: tuple[str, ...] = ()
    sets_rate: bool = False
    max_hz: float | None = None


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A client frame that cannot be used; `message` goes back in an error frame."""

    message: str


def parse_client_message(text: str | bytes) -> Action | BadFrame:
    """Interpret one client frame; never raises."""
    try:
        msg = jsonx.loads(text)
    except jsonx.NotJSON as exc:
        # the parser's reason, cut short: valid JSON with a number past what it takes (1e400, 5,000 digits)
        # was told only "not JSON" (an outside audit)
        return BadFrame(f"frame is not JSON ({str(exc)[:80]})")
    if not isinstance(msg, dict):
        return BadFrame("frame must be a JSON object")
    action = msg.get("action")
    if action == "ping":
        return Action("ping")
    if action in ("subscribe", "unsubscribe"):
        sets_rate = action == "subscribe" and "max_hz" in msg
        topics = msg.get("topics")  # a list, or one string of comma-separated patterns as in `topics=`
        if sets_rate and not topics:
            topics = None  # only the rate changes
        elif not isinstance(topics, (list, str)):
            return BadFrame(f"{action}: 'topics' must be a list of patterns")
        try:
            patterns = parse_patterns(topics) if topics is not None else ()
        except PatternError as exc:
            return BadFrame(f"{action}: {exc}")
        if sets_rate:
            try:
                return Action(action, patterns, True, parse_max_hz(msg["max_hz"]))
            except RateError as exc:
                return BadFrame(f"subscribe: {exc}")
        return Action(action, patterns)
    if action is None:
        return BadFrame("missing 'action'")
    return BadFrame(f"unknown action {str(action)[:64]!r}; expected subscribe, unsubscribe or ping")


# -- server -> client ---------------------------------------------------------


def _join(events: Iterable[Event]) -> bytes:
    return b"[" + b",".join(ev.json for ev in events) + b"]"


def events_message(events: Iterable[Event], conflated: int = 0) -> bytes:
    """{"type":"events","events":[...]} from the events' prebuilt JSON; `"conflated": N` after thinning (§12)."""
    if conflated:
        return b'{"type":"events","conflated":%d,"events":' % conflated + _join(events) + b"}"
    return b'{"type":"events","events":' + _join(events) + b"}"


def snapshot_message(epoch: str, last_seq: int, recovered: bool, events: Iterable[Event],
                     missing: tuple[int, int] | None = None) -> bytes:
    head: dict[str, Any] = {"type": "snapshot", "epoch": epoch, "last_seq": last_seq, "recovered": recovered}
    if missing is not None:
        head["missing"] = list(missing)
    return jsonx.dumps(head)[:-1] + b',"events":' + _join(events) + b"}"


def subscribed_message(topics: tuple[str, ...], max_hz: float | None = None) -> bytes:
    """The whole subscription after a change, and the rate in force (null: every event)."""
    return jsonx.dumps({"type": "subscribed", "topics": list(topics), "max_hz": _rate(max_hz)})


def _rate(max_hz: float | None) -> float | int | None:
    """2.0 is written 2: what the client most likely sent."""
    return int(max_hz) if max_hz is not None and max_hz.is_integer() else max_hz


def slow_message(mode: str) -> bytes:
    """A conflating slow client's mode change (§12): "conflated" or "live"."""
    return b'{"type":"slow","mode":"%s"}' % mode.encode()


PONG_MESSAGE = b'{"type":"pong"}'


def error_message(message: str) -> bytes:
    return jsonx.dumps({"type": "error", "message": message})


def closing_message(reason: str) -> bytes:
    return jsonx.dumps({"type": "closing", "reason": reason})


# -- RFC 6455 framing (server side: never masked, never compressed) -----------

OP_TEXT = 0x1
OP_CLOSE = 0x8


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One complete, final, unmasked frame."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        head = struct.pack("!BB", first, n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 126, n)
    else:
        head = struct.pack("!BBQ", first, 127, n)
    return head + payload


def ws_close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit the 125-byte control payload."""
    # cut on a character boundary: a close reason must be valid UTF-8
    cut = reason.encode()[:123].decode("utf-8", "ignore").encode()
    return ws_frame(struct.pack("!H", code) + cut, OP_CLOSE)


# -- Server-Sent Events ---------------------------------------------------------


def sse_event(ev: Event) -> bytes:
    """One event; its id is its seq (contract §4), what EventSource sends back as Last-Event-ID.

    The sixteenth and seventeenth sessions sent `<epoch>:<seq>`, so that a browser away across an epoch
    change could not be taken for a client of the new epoch; the contract says `id: seq`, and a bare
    seq is what `since` is too (without `epoch`, the same ambiguity). `<epoch>:<seq>` is still taken
    as Last-Event-ID from a client that keeps the epoch itself."""
    return b"id: %d\nevent: event\ndata: %s\n\n" % (ev.seq, ev.json)


def sse_events(events: Iterable[Event]) -> bytes:
    return b"".join(sse_event(ev) for ev in events)


def sse_gap(missing: tuple[int, int]) -> bytes:
    return b"event: gap\ndata: " + jsonx.dumps({"missing": list(missing)}) + b"\n\n"


def sse_conflated(conflated: int) -> bytes:
    """Precedes the events of a thinned release (§12)."""
    return b'event: conflated\ndata: {"conflated":%d}\n\n' % conflated


def sse_slow(mode: str) -> bytes:
    return b"event: slow\ndata: " + slow_message(mode) + b"\n\n"


def sse_closing(reason: str) -> bytes:
    return b"event: closing\ndata: " + closing_message(reason) + b"\n\n"


SSE_KEEPALIVE = b": keep-alive\n\n"
