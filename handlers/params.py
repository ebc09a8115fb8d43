"""Request parameters parsed and checked as data; each error names its parameter."""

import re
from dataclasses import dataclass
from typing import Mapping

from handlers.conflate import DECIMAL, MAX_HZ, RateError, parse_max_hz
from handlers.topics import PatternError, parse_patterns

# What a number looks like in a query, and nothing else that Python's int() and float() take:
# no spaces, no `_` between digits, no `+`, no digits of other scripts, no inf or nan.
INTEGER = re.compile(r"-?[0-9]+")
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")  # a flag's spellings; empty = its default


class ParamError(ValueError):
    """A malformed or out-of-range request parameter (→ HTTP 400)."""


def int_param(args: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    """ASCII digits with an optional leading `-`, in lo..hi; absent or empty = `default`."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if not INTEGER.fullmatch(raw):
        raise ParamError(f"'{name}' must be an integer, got {raw[:40]!r}")
    value = int(raw) if len(raw) <= 40 else None  # int() of thousands of digits is slow, then an error
    if value is None or not lo <= value <= hi:
        raise ParamError(f"'{name}' must be in {lo}..{hi}, got {raw[:40]}")
    return value


def bool_param(args: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A flag: 1, true or yes; 0, false or no; absent or empty = `default`."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if raw in TRUE or raw in FALSE:
        return raw in TRUE
    raise ParamError(f"'{name}' must be 1, true, yes, 0, false or no, got {raw[:40]!r}")


def topics_param(args: Mapping[str, str], name: str = "topics") -> tuple[str, ...]:
    raw = args.get(name)
    if raw is None or raw == "":
        return ("*",)
    try:
        return parse_patterns(raw)
    except PatternError as exc:
        raise ParamError(f"'{name}': {exc}") from None


MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class StreamParams:
    """What a /ws or /sse client asked for."""

    topics: tuple[str, ...]
    since: int | None
    epoch: str | None
    snapshot: int                   # with `snapshot_latest`: at most this many topics
    max_hz: float | None = None     # §12: per-topic rate; None = every event
    on_slow: str = "close"          # §12: "close" or "conflate"
    snapshot_latest: bool = False   # §12: snapshot=latest, the newest event of each topic


ON_SLOW = ("close", "conflate")


def delivery_params(args: Mapping[str, str]) -> tuple[float | None, str]:
    """`max_hz` and `on_slow` of contract §12."""
    raw = args.get("max_hz")
    max_hz = None
    if raw:
        try:
            max_hz = parse_max_hz(raw) if len(raw) <= 32 and DECIMAL.fullmatch(raw) else None
        except RateError:
            pass
        if max_hz is None:  # the value as given, not as the float it parsed to
            raise ParamError(f"'max_hz' must be a number in (0, {MAX_HZ:g}], got {raw[:32]!r}")
    on_slow = args.get("on_slow") or "close"
    if on_slow not in ON_SLOW:
        raise ParamError(f"'on_slow' must be close or conflate, got {on_slow[:40]!r}")
    return max_hz, on_slow


def stream_params(args: Mapping[str, str], last_event_id: str | None,
                  snapshot_default: int, snapshot_max: int) -> StreamParams:
    """`since` from a Last-Event-ID header (SSE), else from the query. The header wins: a browser's
    EventSource reconnects to the same URL, `since` and all, with the id of the last event it got, so the
    query's `since` is the older point (the query winning replayed every event since then, an outside audit)."""
    since = int_param(args, "since", None, 0, MAX_SEQ)
    epoch = args.get("epoch") or None
    if last_event_id and last_event_id.strip():
        # a seq (the relay's id), or `<epoch>:<seq>` from a client that keeps the epoch: one colon at most,
        # an epoch before it (':51605' read as a bare seq, 'E:51605:1' as seq 1 of an epoch 'E:51605')
        id_epoch, colon, id_seq = last_event_id.strip().rpartition(":")
        if not id_seq or (colon and (not id_epoch or ":" in id_epoch)):
            raise ParamError(f"'Last-Event-ID' must be <epoch>:<seq> or a seq, got {last_event_id[:40]!r}")
        since = int_param({"Last-Event-ID": id_seq}, "Last-Event-ID", None, 0, MAX_SEQ)
        epoch = id_epoch or epoch
    if epoch is not None and len(epoch) > 128:
        raise ParamError("'epoch' is longer than 128 characters")
    latest = args.get("snapshot") == "latest"
    max_hz, on_slow = delivery_params(args)
    try:
        snapshot = snapshot_max if latest else int_param(args, "snapshot", snapshot_default, 0, snapshot_max)
    except ParamError as exc:
        raise ParamError(f"{exc} (or latest)") from None
    return StreamParams(
        topics=topics_param(args),
        since=since,
        epoch=epoch,
        snapshot=snapshot,
        max_hz=max_hz,
        on_slow=on_slow,
        snapshot_latest=latest,
    )
