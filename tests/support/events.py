"""Numbered test events, and feeding them through the fake upstream into a running relay."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .waiting import wait_until

if TYPE_CHECKING:
    from .relay import Relay
    from .upstream import FakeUpstream


def unique_sym() -> str:
    """A symbol no other test uses, so a topic filter isolates a test's events."""
    return "S" + uuid.uuid4().hex[:10].upper()


def trades(start: int, stop: int, sym: str = "AAPL", ev: str = "T", **extra: Any) -> list[dict[str, Any]]:
    """Polygon-style trade elements numbered `start` .. `stop - 1` in field `n`."""
    return [
        {"ev": ev, "sym": sym, "n": n, "p": 100 + n / 4, "s": 100, "t": 1764124800000 + n, **extra}
        for n in range(start, stop)
    ]


def seqs_of(events: Sequence[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


def data_of(events: Sequence[dict[str, Any]]) -> list[Any]:
    return [event["data"] for event in events]


def feed(
    relay: Relay,
    upstream: FakeUpstream,
    items: Sequence[Any],
    *,
    batch: int | None = 50,
    timeout_s: float = 20.0,
) -> list[int]:
    """Send `items` through the upstream, wait until the relay has sequenced them, return their seqs.

    Only valid while nothing else feeds the relay: the seqs are then the next
    len(items) numbers, and the relay's last_seq must land exactly there.
    """
    before = relay.health()["last_seq"]
    upstream.emit(items, batch=batch)
    expected = before + len(items)
    wait_until(
        lambda: relay.health()["last_seq"] >= expected,
        timeout_s,
        f"relay last_seq to reach {expected} after {len(items)} upstream events",
        describe=lambda: f"last_seq={relay.health()['last_seq']}",
    )
    last = relay.health()["last_seq"]
    assert last == expected, f"relay sequenced {last - before} events for {len(items)} sent"
    return list(range(before + 1, expected + 1))
