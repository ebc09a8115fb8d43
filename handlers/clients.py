"""The clients listing of GET /clients as data: one worker's clients counted, grouped, ordered and cut to a limit.

The shell gathers one `ClientState` per connected client (its transport, the
mode the hub has it in, its queue); everything a reader of /clients sees is
decided here. Only the `limit` clients shown are shaped into rows (a worker
may hold tens of thousands), and nothing that identifies a person or a secret
goes out: no token, no address; a client's id is a keyed hash of the shell's
reference to it, stable while it is connected and meaningless elsewhere.
"""

import hashlib
import heapq
from typing import Iterable, NamedTuple

MODES = ("live", "rate", "conflated")  # every event; at most max_hz per topic; slow, on newest values
LIMIT_DEFAULT, LIMIT_MAX = 100, 1000
PATTERNS_SHOWN = 5  # a client may hold a thousand patterns: the first few and the count
GROUPS_MAX = 100  # distinct (transport, mode, max_hz): max_hz is the client's to choose


class ClientState(NamedTuple):
    """One client as the shell saw it (a tuple: a worker may hold tens of thousands)."""

    ref: int                     # the shell's reference to the client object (hashed before it goes out)
    transport: str               # ws, sse, polygon
    mode: str                    # one of MODES
    max_hz: float | None
    on_slow: str                 # close or conflate
    patterns: tuple[str, ...]
    connected_at_s: float | None  # monotonic seconds, the same clock as `now_s`
    queued_events: int           # events written to it but not yet out of the relay
    queued_bytes: int


def client_id(ref: int, key: bytes) -> str:
    """A short opaque id for a client: the same for the same client and key, revealing nothing of `ref`."""
    return hashlib.blake2b(ref.to_bytes(8, "little", signed=False), key=key, digest_size=6).hexdigest()


def _order(state: ClientState) -> tuple:
    """Conflated (slow) clients first, then the most queued, then the longest connected."""
    since = state.connected_at_s if state.connected_at_s is not None else float("inf")
    return (state.mode != "conflated", -state.queued_events, -state.queued_bytes, since, state.ref)


def _group_order(item: tuple[tuple, int]) -> tuple:
    """Largest first; then by transport, mode (as in MODES) and rate, so that the order is stable."""
    (transport, mode, max_hz), n = item
    return -n, transport, MODES.index(mode) if mode in MODES else len(MODES), max_hz or 0.0


def _row(state: ClientState, now_s: float, key: bytes) -> dict:
    connected = None if state.connected_at_s is None else round(max(0.0, now_s - state.connected_at_s), 1)
    return {
        "id": client_id(state.ref, key),
        "transport": state.transport,
        "mode": state.mode,
        "max_hz": state.max_hz,
        "on_slow": state.on_slow,
        "topics": {"patterns": list(state.patterns[:PATTERNS_SHOWN]), "count": len(state.patterns)},
        "connected_s": connected,
        "queued_events": state.queued_events,
        "queued_bytes": state.queued_bytes,
    }


def client_listing(states: Iterable[ClientState], *, limit: int, now_s: float, worker: int, key: bytes) -> dict:
    """The body of GET /clients: every client counted by mode and by group, the first `limit` of them listed.

    Groups are (transport, mode, max_hz), largest first, at most GROUPS_MAX of them
    (`groups_total` says how many there were).
    """
    states = list(states)
    by_mode = dict.fromkeys(MODES, 0)
    groups: dict[tuple, int] = {}
    for s in states:
        by_mode[s.mode] = by_mode.get(s.mode, 0) + 1
        group = (s.transport, s.mode, s.max_hz)
        groups[group] = groups.get(group, 0) + 1
    ordered_groups = sorted(groups.items(), key=_group_order)
    shown = heapq.nsmallest(limit, states, key=_order)
    return {
        "worker": worker,
        "total": len(states),
        "by_mode": by_mode,
        "groups_total": len(groups),
        "groups": [{"transport": transport, "mode": mode, "max_hz": max_hz, "clients": n}
                   for (transport, mode, max_hz), n in ordered_groups[:GROUPS_MAX]],
        "clients": [_row(s, now_s, key) for s in shown],
    }
