"""How many connections a worker takes from the kernel's accept queue each time its listener is readable.

gevent's StreamServer accepts at most `max_accept` connections per wake-up of the listener's
watcher (100 by default), and gunicorn's gevent worker lowers that to 1 when it runs several
workers. Measurement pending (docs/benchmarks.md, "Connect storms, fifth session").
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
