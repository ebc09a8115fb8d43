"""How many connections a worker takes from the kernel's accept queue each time its listener is readable.

gevent's StreamServer accepts at most `max_accept` connections per wake-up of the listener's
watcher (100 by default), and gunicorn's gevent worker lowers that to 1 when it runs several
workers. The worker's loop wakes the watcher only between batches of the handshakes it already
accepted, so its accept rate followed its handshake rate, and in a storm the kernel's accept
queue (BACKLOG 4096 = net.core.somaxconn) filled and dropped SYNs, which the clients resent 1 s
(then 3 s) later. Measured (bench/idle.py storm, 10,000 /ws connects offered within one second,
3 interleaved rounds, docs/benchmarks.md "Connect storms, fifth session"): with gunicorn's choice
the queue reached 4,096 and overflowed 762-950 times (1 worker) and 2,011-4,433 times (7 workers),
each overflow one retransmitted SYN; accepting up to MAX_ACCEPT (4096) per wake-up the queue peaked
at 261-878 and nothing overflowed. The handshake rate did not change (1,300-1,600/s: the CPU of a
handshake, not the accept, is the limit), nor the last client's wait (~5-6 s), which moves from the
kernel's queue into the worker (a queued greenlet and socket each). The cost: with several workers
the first to wake takes more of the storm (7 workers held 691-2,643 each, against 1,237-1,706),
and a /health on HEALTH_BIND waits behind the handshakes its worker already took (7 of 84 probes
over 100 ms, against 2 of 139). And, found later, why it is opt-in (MAX_ACCEPT default 0 =
gunicorn's choice): in the 100,000-client crowd on 7 workers with REDIS_URL (connects offered at
1,500/s for minutes, bench/idle.py crowd --max-accept), a worker ran the thousands of handshakes it
took at once in one long loop iteration and missed its leader-lease renewals: 22-37 lease changes
and 6,000-10,400 held clients closed by the relay with 4096, none with 0 (docs/benchmarks.md,
"MAX_ACCEPT during the 100,000 crowd"). Bounding the handshakes in flight would be the next step.
"""

from __future__ import annotations

from gevent.server import StreamServer


def eager_server(max_accept: int) -> type:
    """A StreamServer class that accepts up to `max_accept` connections per wake-up, whatever gunicorn
    asks (its gevent worker sets `server.max_accept = 1` on each server when it has several workers;
    that wish is kept in `asked_max_accept`, not applied)."""
    if max_accept < 1:
        raise ValueError(f"max_accept must be at least 1, not {max_accept}")

    class EagerStreamServer(StreamServer):
        asked_max_accept: int | None = None

        @property
        def max_accept(self) -> int:
            return max_accept

        @max_accept.setter
        def max_accept(self, value: int) -> None:
            self.asked_max_accept = value

    return EagerStreamServer
