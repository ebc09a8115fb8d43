"""The Polygon/Massive socket protocol as data: client actions in, status and data frames out, upstream statuses.

Clients of `/<market>` speak the vendor's protocol (contract §5): the relay
greets with `connected`, answers `{"action":"auth","params":KEY}` with
`auth_success` or `auth_failed`, acknowledges each topic of a `subscribe` or
`unsubscribe` with its own `success` status, and sends data as JSON arrays of
the upstream elements. Every frame, status or data, is a JSON array.

The same status shape, arriving from a Polygon upstream, is told apart from
market data by `split_statuses`, so that the relay does not number or store it.
"""

from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from handlers import jsonx
from handlers.entitlements import split_by_scope
from handlers.events import Event
from handlers.frames import Element
from handlers.topics import MAX_PATTERNS, PatternError, add_patterns, parse_patterns, text_of

MARKETS = ("stocks", "options", "forex", "crypto", "indices")

MAX_FRAME_BYTES = 1 << 20
"""Every frame sent to a Polygon client stays under 1 MiB (WebSocket header included)."""
_HEADER_ROOM = 16  # a WebSocket frame header is at most 10 bytes from a server

MAX_TOPICS = 10_000
"""The most topics one Polygon connection may hold (the vendor's own subscriptions run to thousands of tickers)."""

OK_STATUSES = frozenset({"connected", "auth_success", "success"})
"""Statuses that mean all is well; any other one from an upstream is a problem worth showing."""


# -- server -> client: status frames ------------------------------------------


def status(state: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": state, "message": message}


def status_frame(*statuses: dict[str, str]) -> bytes:
    """One frame: a JSON array of status messages."""
    return jsonx.dumps(list(statuses))


CONNECTED = status_frame(status("connected", "Connected Successfully"))
AUTH_SUCCESS = status_frame(status("auth_success", "authenticated"))
AUTH_FAILED = status_frame(status("auth_failed", "authentication failed"))
AUTH_REQUIRED = status_frame(status("error", "not authenticated: send {\"action\":\"auth\",\"params\":KEY} first"))
ALREADY_AUTHENTICATED = status_frame(status("error", "already authenticated"))
AUTH_TIMEOUT = status_frame(status("auth_timeout", "no auth message in time: disconnecting"))


def error_frame(message: str) -> bytes:
    return status_frame(status("error", message))


def closing_frame(reason: str) -> bytes:
    """What a client reads before a close the relay starts: `slow_consumer`, `shutdown`, ..."""
    messages = {
        "slow_consumer": "client is too slow: its backlog passed the relay's bound; disconnecting",
        "shutdown": "the relay is restarting: reconnect",
        "resync": "this relay worker missed events from its cluster's stream (they were trimmed before it read "
                  "them): reconnect",
    }
    return status_frame(status(reason, messages.get(reason, reason)))


# -- client -> server: actions --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    key: str | None  # None when `params` is not a string


@dataclass(frozen=True, slots=True)
class TopicChange:
    """A subscribe or unsubscribe: the usable topics, and the refused ones with why."""

    kind: str  # "subscribe" | "unsubscribe"
    topics: tuple[str, ...]
    refused: tuple[tuple[str, str], ...] = ()
    forbidden: tuple[str, ...] = ()  # outside the key's TOKEN_TOPICS


@dataclass(frozen=True, slots=True)
class BadAction:
    message: str


def parse_action(text: str | bytes) -> Auth | TopicChange | BadAction:
    """Interpret one client frame; never raises."""
    try:
        msg = jsonx.loads(text)
    except jsonx.NotJSON:
        return BadAction("message is not JSON")
    if not isinstance(msg, dict):
        return BadAction("message must be a JSON object with 'action' and 'params'")
    action = msg.get("action")
    params = msg.get("params")
    if action == "auth":
        return Auth(params if isinstance(params, str) else None)
    if action in ("subscribe", "unsubscribe"):
        if isinstance(params, list) and all(isinstance(p, str) for p in params):
            params = ",".join(params)
        if not isinstance(params, str):
            return BadAction(f"{action}: 'params' must be a string such as \"T.AAPL,Q.*\"")
        if params.count(",") >= MAX_PATTERNS and len([p for p in params.split(",") if p.strip()]) > MAX_PATTERNS:
            return BadAction(f"{action}: at most {MAX_PATTERNS} topics in one message")
        topics, refused = split_params(params)
        if not topics and not refused:
            return BadAction(f"{action}: no topics in 'params'")
        return TopicChange(action, topics, refused)
    if action is None:
        return BadAction("missing 'action'")
    return BadAction(f"unknown action {str(action)[:64]!r}; expected auth, subscribe or unsubscribe")


def split_params(params: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """"T.AAPL, Q.*" -> the topics, trimmed, in order, once each; and those refused, with why."""
    topics: dict[str, None] = {}
    refused: list[tuple[str, str]] = []
    for item in params.split(","):
        topic = item.strip()
        if not topic:
            continue
        try:
            parse_patterns([topic])
        except PatternError as exc:
            refused.append((text_of(topic[:64]), str(exc)))
            continue
        topics[topic] = None
    return tuple(topics), tuple(refused)


def change_reply(change: TopicChange, current: tuple[str, ...],
                 limit: int = MAX_TOPICS) -> tuple[tuple[str, ...], bytes]:
    """Apply a subscribe/unsubscribe to `current`: the new topics and the frame of per-topic statuses."""
    statuses = []
    if change.kind == "subscribe":
        topics, refused = add_patterns(current, change.topics, limit)
        over = set(refused)
        statuses.extend(status("error", f"subscription limit of {limit} topics reached: {topic}") if topic in over
                        else status("success", f"subscribed to: {topic}") for topic in change.topics)
    else:
        gone = set(change.topics)
        topics = tuple(t for t in current if t not in gone)
        statuses.extend(status("success", f"unsubscribed to: {topic}") for topic in change.topics)
    statuses.extend(status("error", f"invalid topic {topic!r}: {why}") for topic, why in change.refused)
    statuses.extend(status("error", f"not allowed for this key: {topic}") for topic in change.forbidden)
    return topics, status_frame(*statuses)


def limit_change(change: TopicChange, scope: tuple[str, ...] | None) -> TopicChange:
    """A subscribe within the key's TOKEN_TOPICS patterns; the others become `forbidden` (None: no limit)."""
    if scope is None or change.kind != "subscribe":
        return change
    allowed, forbidden = split_by_scope(change.topics, scope)
    return replace(change, topics=allowed, forbidden=forbidden)


# -- server -> client: data -------------------------------------------------------


def is_market_data(ev: Event) -> bool:
    """Whether an event can go to a Polygon client: an object carrying `ev`, as the vendor's clients expect."""
    return not ev.raw and isinstance(ev.data, dict) and "ev" in ev.data


def data_frames(events: Iterable[Event], max_bytes: int = MAX_FRAME_BYTES) -> list[bytes]:
    """The events' `data` as JSON arrays, split so that no frame reaches `max_bytes`.

    Built from each event's prebuilt JSON (no second serialization). Events that
    are not market data (see is_market_data) are left out, and so is an element
    too big to fit a frame on its own.
    """
    limit = max_bytes - _HEADER_ROOM
    frames: list[bytes] = []
    parts: list[bytes] = []
    size = 2  # the frame so far, "[" and "]" included
    for ev in events:
        if not is_market_data(ev):
            continue
        blob = ev.data_json
        if 2 + len(blob) > limit:
            continue
        if parts and size + 1 + len(blob) > limit:
            frames.append(b"[" + b",".join(parts) + b"]")
            parts, size = [], 2
        size += len(blob) + (1 if parts else 0)
        parts.append(blob)
    if parts:
        frames.append(b"[" + b",".join(parts) + b"]")
    return frames


# -- upstream statuses -------------------------------------------------------------

_STATUS_KEYS = frozenset({"ev", "status", "message"})


def is_status(data: Any) -> bool:
    """A Polygon status message: exactly `ev: "status"`, a string `status` and (optionally) a string `message`.

    The shape is strict so that a feed of another kind whose events merely
    carry `ev: "status"` keeps every one of them as an event.
    """
    return (type(data) is dict and data.get("ev") == "status" and isinstance(data.get("status"), str)
            and isinstance(data.get("message", ""), str) and data.keys() <= _STATUS_KEYS)


def split_statuses(elements: Sequence[Element]) -> tuple[Sequence[Element], list[dict]]:
    """An upstream frame's elements: (market elements, Polygon status messages), each in order.

    A frame without a status (nearly every one) comes back as it is, uncopied,
    after one cheap look at each element: this runs for every upstream frame.
    """
    for data in elements:
        if type(data) is dict and data.get("ev") == "status":
            break
    else:
        return elements, []
    market: list[Element] = []
    statuses: list[dict] = []
    for data in elements:
        if type(data) is dict and data.get("ev") == "status" and is_status(data):  # a RawText is no dict
            statuses.append(data)
        else:
            market.append(data)
    return (market, statuses) if statuses else (elements, statuses)


def status_problem(message: dict) -> str | None:
    """For a status that is not one of OK_STATUSES: a line saying what the upstream reported."""
    state = message.get("status")
    if state in OK_STATUSES:
        return None
    text = message.get("message")
    return f"upstream status {state}: {text}" if text else f"upstream status {state}"
