"""Per-worker runtime: the objects one process shares, and the greenlets that drive them."""

import logging
import os
import secrets
import time

import gevent

from handlers.cache import EventCache
from webapp.hub import Hub
from webapp.ingest import Ingest
from webapp.metrics import Metrics
from webapp.settings import Settings
from webapp.upstream import Upstream

log = logging.getLogger(__name__)


def new_epoch() -> str:
    """A fresh seq space: start time plus randomness, sortable and unique."""
    return f"{int(time.time()):x}-{secrets.token_hex(4)}"


class Runtime:
    """Builds the cache, hub, ingest loop and upstream; `start()` spawns their greenlets.

    Construction does no I/O, so `create_app` (and tests) can build one freely.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.started_at = time.time()
        self.epoch = new_epoch()
        self.metrics = Metrics()
        self.cache = EventCache(settings.cache_max_items, settings.cache_ttl_seconds)
        self.delivered = 0  # event deliveries to clients, for /health and the monitor
        self.hub = Hub(settings.hub_flush_interval_ms, on_delivered=self._on_delivered,
                       on_flush=self.metrics.flush_seconds.observe)
        self.ingest = Ingest(self.cache, self.hub, self.metrics, topic_fields=settings.topic_fields,
                             max_frame_bytes=settings.upstream_max_frame_bytes)
        self.demo = None
        if settings.upstream_url is None:
            from webapp.demo import DemoFeed  # only a relay without an upstream needs it

            self.demo = DemoFeed(settings.demo_rate, settings.demo_port)
        self.upstream = Upstream(
            settings.upstream_url or "",  # the demo's URL is known once it listens
            self._on_frame,
            init_messages=settings.upstream_init,
            headers=settings.upstream_headers,
            ping_interval_s=settings.upstream_ping_interval_s,
            ping_timeout_s=settings.upstream_ping_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            backoff_min_ms=settings.upstream_backoff_min_ms,
            backoff_max_ms=settings.upstream_backoff_max_ms,
            healthy_after_s=settings.upstream_healthy_after_s,
            on_state=self._on_upstream_state,
        )
        self.store_backend = "none"  # persistence: see the ClickHouse issue
        self._greenlets: list[gevent.Greenlet] = []
        self._reconnects_counted = 0
        self.running = False
        self.shutting_down = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the background greenlets of this worker (gunicorn post_worker_init)."""
        if self.running:
            return
        self.running = True
        if self.demo is not None:
            self.demo.start()
            self.upstream.url = self.upstream.state.url = self.demo.url
            log.info("no UPSTREAM_URL: serving the built-in demo feed at %s", self.demo.url)
        self._greenlets = [gevent.spawn(self.hub.run), gevent.spawn(self.upstream.run)]
        log.info("relay started (pid %d, epoch %s)", os.getpid(), self.epoch)

    def shutdown(self) -> None:
        """SIGTERM: stop reading, tell clients, close them with 1001."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.info("shutting down: closing %d clients", self.hub.client_count)
        self.upstream.stop()
        self.hub.close_all("shutdown", 1001)
        if self.demo is not None:
            self.demo.stop()
        for greenlet in self._greenlets:
            greenlet.kill(block=False)

    # -- callbacks ---------------------------------------------------------------

    def _on_delivered(self, transport: str, frames: int, events: int) -> None:
        self.delivered += events
        self.metrics.delivered(transport, frames, events)

    def _on_frame(self, payload: bytes, binary: bool, recv_ms: int) -> None:
        self.metrics.frames_in.inc()
        self.upstream.state.events += len(self.ingest.handle_frame(payload, binary, recv_ms))

    def _on_upstream_state(self, state) -> None:
        self.metrics.upstream_connected.set(1 if state.connected else 0)
        new_reconnects = state.reconnects - self._reconnects_counted
        if new_reconnects > 0:
            self.metrics.upstream_reconnects.inc(new_reconnects)
            self._reconnects_counted = state.reconnects

    # -- views -------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    @property
    def last_seq(self) -> int:
        return self.ingest.last_seq

    def render_metrics(self) -> bytes:
        m = self.metrics
        for kind, n in self.hub.clients_by_kind.items():
            m.clients.labels(kind).set(n)
        m.cache_items.set(len(self.cache))
        m.last_seq.set(self.last_seq)
        return m.render()

    def health(self) -> dict:
        s = self.upstream.state
        now = time.time()
        in_grace = now - self.started_at < self.settings.startup_grace_s
        degraded = (not s.connected and not in_grace) or self.shutting_down
        return {
            "status": "degraded" if degraded else "ok",
            "version": VERSION,
            "uptime_s": round(now - self.started_at, 3),
            "epoch": self.epoch,
            "last_seq": self.last_seq,
            "upstream": {
                "url": s.url,
                "demo": self.demo is not None,
                "connected": s.connected,
                "reconnects": s.reconnects,
                "last_message_at": s.last_message_at,
                "last_error": s.last_error,
                "events": s.events,
                "parse_errors": self.ingest.parse_errors,
                "oversize_frames": self.ingest.oversize_frames,
            },
            "store": {"backend": self.store_backend, "ok": True, "pending": 0, "spooled": 0, "spooled_bytes": 0},
            "clients": self.hub.client_count,
            "clients_by_transport": dict(self.hub.clients_by_kind),
            "delivered": self.delivered,
            "cache": {"items": len(self.cache)},
        }


VERSION = "0.1.0"
