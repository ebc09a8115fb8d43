"""The built-in demo feed: Polygon-style trades and quotes served over a real local WebSocket."""

import time

import gevent

from handlers.demo import DemoMarket
from webapp.feedserver import FeedServer


class DemoFeed:
    """A FeedServer on loopback plus a greenlet emitting market events at `rate_per_s`."""

    def __init__(self, rate_per_s: float, port: int = 0, seed: int | None = None,
                 honour_subscriptions: bool = False, spawn=gevent.spawn):
        self.rate_per_s = rate_per_s
        self.port = port
        self.honour_subscriptions = honour_subscriptions  # UPSTREAM_SUBSCRIBE=polygon: a peer gets what it subscribed to
        self.server = FeedServer(port=port, honour_subscriptions=honour_subscriptions)
        self.market = DemoMarket(seed=seed if seed is not None else int(time.time()))
        self._greenlet: gevent.Greenlet | None = None
        self._spawn = spawn  # the runtime passes its supervised spawn (webapp/tasks.py)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def running(self) -> bool:
        return self._greenlet is not None and not self._greenlet.dead

    def start(self) -> None:
        if self.server is None:  # stopped before (a leader that stepped down and came back)
            self.server = FeedServer(port=self.port, honour_subscriptions=self.honour_subscriptions)
        self.server.start()
        self._greenlet = self._spawn(self._emit)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _emit(self) -> None:
        # Ticks of 100 ms (or slower for low rates) carry bursts of several events
        # in one array frame, as Polygon sends them.
        interval_s = max(0.1, 1.0 / self.rate_per_s) if self.rate_per_s > 0 else 1.0
        owed = 0.0
        while True:
            gevent.sleep(interval_s)
            owed += self.rate_per_s * interval_s
            n, owed = int(owed), owed - int(owed)
            if n and self.server.peer_count:
                now_ms = int(time.time() * 1000)
                self.server.broadcast_elements(self.market.tick(now_ms, n))
