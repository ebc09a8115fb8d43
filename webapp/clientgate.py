"""Whether this worker takes new client connections (LEADER_ACCEPTS).

In a cluster every event of every client passes through one worker's upstream read: the lease
holder's. When it also serves clients, an upstream frame waits in its socket while it writes its
own clients' frames (a flush to ~150 clients is 1-3 ms here), and every worker's clients wait with
it. With LEADER_ACCEPTS=false and several workers on one listening socket, the lease holder stops
accepting: the kernel's queue is drained by the others, and the leader reads the upstream, appends
and persists. Clients it already holds stay (a worker that wins the lease after a failover keeps
its own). With one worker on the socket the setting does nothing: nobody else would accept.

Measured (docs/benchmarks.md, "The leader without clients"): 7 workers, 1,000 clients at 200
events/s on 2 cores: upstream send -> the leader's read, p50 1.2-1.8 ms and p99 6.7-9.9 ms without
clients on the leader, against 3.2-4.3 and 10.9-18.0 with them.

The gate wraps whichever server class webapp/accept.py chose: while closed, `start_accepting` does
nothing (gevent calls it again whenever its pool frees a place), and closing stops every listener's
watcher. Connections already accepted (PacedServer's waiting sockets included) go on.
"""

from __future__ import annotations

import logging
import weakref

log = logging.getLogger(__name__)

_servers: weakref.WeakSet = weakref.WeakSet()  # this worker's listeners (the gated class registers them)
_closed = False


def gated(base: type) -> type:
    """`base` (a gevent StreamServer class) that accepts nothing while the gate is closed."""

    class Gated(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _servers.add(self)

        def start_accepting(self) -> None:
            if not _closed:
                super().start_accepting()

    Gated.__name__ = Gated.__qualname__ = f"Gated{base.__name__}"
    return Gated


def is_open() -> bool:
    return not _closed


def set_open(open_: bool) -> None:
    """Open (accept as usual) or close the gate for every listener of this worker; no-op when unchanged."""
    global _closed
    if _closed == (not open_):
        return
    _closed = not open_
    for server in list(_servers):
        if server.closed:
            continue
        if open_:
            server._start_accepting_if_started()  # gevent's own "accept again", only once it was started
        else:
            server.stop_accepting()
    log.info("%s new client connections (LEADER_ACCEPTS=false)", "accepting" if open_ else "leaving to the other workers")
