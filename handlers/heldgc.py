"""When a worker's held connections go out of (and back into) the cyclic garbage collector's reach.

A held /ws connection is ~26 objects the collector tracks; with 9,000 of them (and the
app) a full (generation-2) collection took 35-50 ms of a core (docs/benchmarks.md),
14,000 per worker make it ~70 ms, and on a loaded 2-core machine
that pause stretches to hundreds of ms for every client of the worker. The connections
live for hours, so scanning them is wasted: after a collection of what is not frozen yet (so that no garbage is
frozen), `gc.freeze()` moves every object tracked so far into the permanent generation, which collections skip. Refcounting still frees what
a closed connection leaves (the keeper breaks its cycles when it closes); what it cannot
free is a cycle it did not break, so once a quarter of what was frozen has closed, the
worker thaws (`gc.unfreeze()` + one full collection, the pause it avoided, paid once).
"""

from __future__ import annotations

FREEZE_MIN_TAKEN = 200  # new connections worth a freeze (a collection of what is not frozen + a list splice)
THAW_SHARE = 0.25  # closed connections, as a share of those frozen, that call for a full collection
THAW_MIN_CLOSED = 200


def gc_step(taken: int, closed: int, frozen: int) -> str | None:
    """"thaw", "freeze" or None, from the connections taken and closed since the last step that
    acted, and the connections that were held at the last freeze."""
    if closed >= max(THAW_MIN_CLOSED, THAW_SHARE * frozen):
        return "thaw"
    if taken >= FREEZE_MIN_TAKEN:
        return "freeze"
    return None
