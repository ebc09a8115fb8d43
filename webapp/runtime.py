"""Per-worker runtime: the objects one process shares, and the greenlets that drive them."""

import logging
import os
import secrets
import signal
import socket
import time

import gevent
import gevent.event
import gevent.lock

from handlers.cache import EventCache
from handlers.events import Event
from handlers.holes import holes_to_report
from handlers.polygon import status_problem
from webapp import health as views
from webapp.bus import Bus, MemoryBus
from webapp.bus.redis import FAILURES as REDIS_FAILURES
from webapp.hub import Hub
from webapp.ingest import Ingest
from webapp.logs import Throttle, held_note, printable
from webapp.metrics import Metrics
from webapp.recovery import recover
from webapp.settings import Settings
from webapp.sockets import CLOSE_TRY_AGAIN_LATER
from webapp.store import SeqState, make_store
from webapp.store.spool import Spool
from webapp.store.writer import StoreWriter
from webapp.streams import SnapshotLedger
from webapp.tasks import EXIT, Tasks
from webapp.threads import call_in_thread
from webapp.upstream import Upstream
from webapp.upstream_subs import RedisRegistry, UpstreamSubscriptions
from webapp.wire import kernel_wmem_max, send_buffer_cap

log = logging.getLogger(__name__)



def worker_name() -> str:
    """Who holds the lease: host, pid and a random part (a pid can be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


STATUS_HISTORY = 20  # upstream status messages kept for /health
STATUS_TEXT_MAX = 500  # characters of a status's fields kept (in /health, the monitor, the log)


def new_epoch() -> str:
    """A fresh seq space: start time plus randomness, sortable and unique."""
    return f"{int(time.time()):x}-{secrets.token_hex(4)}"


class Runtime:
    """Builds the cache, hub, ingest loop, store writer and upstream; `start()` spawns their greenlets.

    Construction does no I/O, so `create_app` (and tests) can build one freely.
    """

    new_epoch = staticmethod(new_epoch)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.started_at = time.time()
        self.epoch = new_epoch()
        self.metrics = Metrics()
        self.metrics.read_parts(lambda: views.metric_values(self))  # each part's state, read at scrape time
        self.cache = EventCache(settings.cache_max_items, settings.cache_ttl_seconds, settings.cache_max_bytes)
        self.delivered = 0  # event deliveries to clients, for /health and the monitor
        self.hub = Hub(settings.hub_flush_interval_ms, on_delivered=self._on_delivered,
                       on_flush=self.metrics.flush_seconds.observe, on_conflated=self.metrics.conflated_events.inc,
                       max_held=settings.ws_queue_max_events)
        self.tasks = Tasks(lambda name: self.metrics.task_crashes.labels(name).inc(), self._crashed,
                           backoff_max_ms=settings.task_backoff_max_ms, fault_hooks=settings.fault_hooks)
        self.role = "starting"
        self.leadership = None
        if settings.redis_url:
            from webapp.bus.redis import RedisBus
            from webapp.leader import Leadership

            self.bus: Bus = RedisBus(settings.redis_url, settings.redis_prefix, worker_name(), self._serve,
                                     lease_ms=settings.leader_lease_ms,
                                     stream_maxlen=settings.stream_maxlen or settings.cache_max_items,
                                     outbox_max=settings.bus_outbox_max,
                                     on_outbox_full=self.metrics.bound_hits.labels("bus_outbox").inc)
            self.leadership = Leadership(self, self.bus)
        else:
            self.bus = MemoryBus(self._serve)
        self.bus.on_epoch = self._on_new_epoch
        self.bus.on_gap = self._on_bus_gap
        self.resyncs = 0  # bus gaps after which this worker's clients were closed to resume
        self.clustered = settings.redis_url is not None
        registry = None
        if settings.upstream_subscribe and self.clustered:
            registry = RedisRegistry(settings.redis_url, settings.redis_prefix, self.bus.lease.holder,
                                     settings.leader_lease_ms)
        self.subs = UpstreamSubscriptions(settings, leading=lambda: self.role in ("single", "leader"),
                                          upstream=lambda: self.upstream, registry=registry)
        if self.subs.enabled:
            self.hub.on_subscription = self.subs.client_changed
        self.feeding_writer = False  # clustered leader: events read from the stream go to the writer
        self.store = make_store(settings)
        self.store_backend = settings.store_backend
        self.spool = self.seq_state = self.writer = None
        if self.store is not None:
            self.spool = Spool(os.path.join(settings.data_dir, "spool"), settings.spool_max_bytes)
            self.seq_state = SeqState(settings.data_dir, settings.seq_reserve_block)
            self.writer = StoreWriter(
                self.store, self.spool, batch_rows=settings.store_batch_rows, batch_ms=settings.store_batch_ms,
                retry_max_ms=settings.store_retry_max_ms, on_written=self._on_written, on_dropped=self._on_dropped,
                in_thread=call_in_thread, poison_attempts=settings.store_poison_attempts,
                dead_letter_dir=os.path.join(settings.data_dir, "dead-letter"),
                may_write=self.leadership.may_write if self.leadership is not None else lambda: True)
        self.enricher = None
        if settings.enrich_sql and self.store is not None:
            from webapp.enrich import Enricher

            self.enricher = Enricher(self.store, settings.enrich_sql, settings.enrich_ttl_ms,
                                     settings.enrich_timeout_ms, self.metrics, cache_max=settings.enrich_cache_max,
                                     concurrency=settings.enrich_concurrency)
        self.ingest = Ingest(self._publish, self.metrics, topic_fields=settings.topic_fields,
                             max_frame_bytes=settings.upstream_max_frame_bytes,
                             # in a cluster the store is written from the stream (see leader.py)
                             persist=self._persist if self.store is not None and not self.clustered else None,
                             enricher=self.enricher, on_statuses=self._on_upstream_statuses,
                             queue_max=settings.enrich_queue_max)
        self.ingest.between_chunks = self._between_chunks
        self.upstream_statuses: list[dict] = []  # the upstream's last status messages (Polygon)
        self._said = Throttle()  # log lines that an upstream could repeat per frame
        self.demo = None
        if settings.upstream_url is None:
            from webapp.demo import DemoFeed  # only a relay without an upstream needs it

            self.demo = DemoFeed(settings.demo_rate, settings.demo_port,
                                 honour_subscriptions=settings.upstream_subscribe == "polygon",
                                 spawn=lambda run: self.tasks.spawn("demo", run))
        self.upstream = self._make_upstream()
        self.ready = gevent.event.Event()  # seq base and epoch known; streams may open
        self.resume_gate = gevent.lock.BoundedSemaphore(settings.resume_concurrency)  # webapp/streams.py
        self.query_gate = gevent.lock.BoundedSemaphore(settings.query_concurrency)  # webapp/routes/query.py
        self.snapshots = SnapshotLedger(settings.snapshot_queue_max_bytes, settings.snapshot_queue_wait_s)
        # every client socket's SO_SNDBUF, so that the kernel holds no more than half the outbound bound
        self.send_buffer_cap = send_buffer_cap(settings.ws_queue_max_bytes, kernel_wmem_max())
        if self.store is None and not self.clustered:
            self.ready.set()  # nothing to recover: seq starts at 1 in a new epoch
            self.role = "single"
        self.boot_error: str | None = None
        self.state_error: str | None = None  # the seq reservation (DATA_DIR/relay.sqlite3) could not be written
        self.lost_range: tuple[int, int] | None = None  # seqs lost in a crash (reported to resuming clients)
        self._greenlets: list[gevent.Greenlet] = []
        self._leading: list[gevent.Greenlet] = []
        self.running = False
        self.shutting_down = False
        self._stopped = gevent.event.Event()

    def _make_upstream(self) -> Upstream:
        s = self.settings
        url = s.upstream_url or (self.demo.url if self.demo is not None and self.demo.running else "")
        return Upstream(
            url, self.ingest.submit_frames,
            init_messages=s.upstream_init,
            headers=s.upstream_headers,
            ping_interval_s=s.upstream_ping_interval_s,
            ping_timeout_s=s.upstream_ping_timeout_s,
            connect_timeout_s=s.upstream_connect_timeout_s,
            backoff_min_ms=s.upstream_backoff_min_ms,
            backoff_max_ms=s.upstream_backoff_max_ms,
            healthy_after_s=s.upstream_healthy_after_s,
            on_state=self._on_upstream_state,
            after_init=self.subs.connected_messages,
            max_frame_bytes=s.upstream_max_frame_bytes,
            on_oversize=self.ingest.skipped_oversize,
            # a clustered leader reads no more while its bus outbox is at BUS_OUTBOX_MAX (webapp/bus/outbox.py)
            hold=self.bus.wait_for_room if self.clustered else None,
        )

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the background greenlets of this worker (gunicorn post_worker_init)."""
        if self.running:
            return
        self.running = True
        self._greenlets = [self.tasks.spawn("hub", self.hub.run), self.tasks.spawn("boot", self._boot, policy=EXIT)]
        if self.subs.enabled:
            self._greenlets.append(self.tasks.spawn("subscriptions", self.subs.run))

    def _boot(self) -> None:
        if self.clustered:
            self.leadership.join()
            return
        if self.store is not None:
            recover(self, floor_seq=0, floor_epoch=None)
        self.ready.set()
        self._lead()
        self.role = "single"

    def _lead(self) -> None:
        """Hold the upstream: read it, number events, publish them, persist them."""
        if self.demo is not None and not self.demo.running:
            self.demo.start()
            log.info("no UPSTREAM_URL: serving the built-in demo feed at %s", self.demo.url)
        reconnects = self.upstream.state.reconnects  # relayhouse_upstream_reconnects_total never goes back
        self.upstream = self._make_upstream()
        self.upstream.state.reconnects = reconnects
        self._leading = []
        if self.writer is not None:
            self._leading.append(self.tasks.spawn("writer", self.writer.run))
        if self.enricher is not None:
            self._leading.append(self.tasks.spawn("ingest", self.ingest.run))
        if self.clustered:
            self._leading.append(self.tasks.spawn("publisher", self.bus.run_publisher))
            self._leading.append(self.tasks.spawn("publish_requests", self.bus.serve_publish_requests,
                                                  self.leadership.publish_here))
            self._leading.append(self.tasks.spawn("watch_lease", self.leadership.watch_lease))
        self._leading.append(self.tasks.spawn("upstream", self.upstream.run))
        log.info("relay leading (pid %d, epoch %s, seq continues after %d, store %s, bus %s)",
                 os.getpid(), self.epoch, self.ingest.last_seq, self.store_backend, self.bus.backend)

    def _crashed(self, task: str, exc: BaseException) -> None:
        """A loop that cannot be restarted safely died: better a fresh worker than one that silently stops."""
        log.critical("%s crashed: %r; restarting this worker", task, exc)
        # the lease is not released here: the graceful shutdown releases it once the store is flushed
        os.kill(os.getpid(), signal.SIGTERM)  # graceful: clients are told, the store flushed; gunicorn respawns

    def shutdown(self) -> None:
        """SIGTERM: stop reading, tell clients, close them with 1001, flush the store."""
        if self.shutting_down:
            return
        self.shutting_down = True
        try:
            log.info("shutting down: closing %d clients", self.hub.client_count)
            leading = self.role in ("single", "leader")
            self.upstream.stop()
            self.hub.close_all("shutdown", 1001)
            if self.demo is not None:
                self.demo.stop()
            if self.clustered:
                # the lease is renewed until the flush is done, and released only after it
                self.leadership.step_down(self._flush_store)
            elif leading and self.ready.is_set():
                self._flush_store()
            self.subs.stop()
            self.tasks.shutdown(timeout_s=2.0)  # every loop stopped and waited for
            if self.enricher is not None:
                self.enricher.close()  # its kept ClickHouse connections
            if self.store is not None:
                self.store.close()
            for greenlet in [*self._leading, *self._greenlets]:
                greenlet.kill(block=False)  # any not started through self.tasks
        finally:
            self._stopped.set()

    def _flush_store(self) -> None:
        if self.writer is None:
            return
        flushed = self.writer.flush(timeout_s=max(1.0, self.settings.graceful_timeout_s - 3))
        if not self.clustered:
            call_in_thread(self.seq_state.save, self.epoch, self.ingest.last_seq)
        log.info("store flushed (%s); last seq %d", "complete" if flushed else "incomplete", self.last_seq)

    def wait_stopped(self, timeout_s: float) -> bool:
        return self._stopped.wait(timeout_s)

    # -- callbacks ---------------------------------------------------------------

    def _publish(self, events: list[Event], receipt: bool = False):
        """To the bus; with Redis and `receipt`, what yields the seqs the append gave them."""
        if receipt and self.clustered:
            return self.bus.publish(events, self.epoch, receipt=True)
        return self.bus.publish(events, self.epoch)

    def _serve(self, events: list[Event]) -> None:
        """From the bus: this worker's cache and clients get the events (and, on a clustered leader, the writer)."""
        self.cache.add(events, events[-1].ts)
        self.hub.publish(events)
        if self.feeding_writer:
            self.writer.enqueue(events)

    def _on_new_epoch(self, epoch: str) -> None:
        """The bus moved to a new seq space: what this worker holds of the old one is not comparable."""
        self.epoch = epoch
        dropped = self.cache.clear()
        self.hub.restart_seq()
        if self.writer is not None:
            self.writer.store_max = None  # ask the store again before the next insert
        log.warning("new epoch %s: %d cached events of the old one dropped", epoch, dropped)

    def _on_bus_gap(self, first: int, last: int) -> None:
        """Seqs first..last never reached this worker (trimmed from the stream before its reader got to
        them: it was stalled past the publisher's wait, see bus/readers.py). Its clients would have skipped
        them without a word: each is closed with `resync` and resumes with `since` (the store has them, or
        its snapshot names the range `missing`); the cache is emptied so no resume is served across them."""
        dropped = self.cache.clear()
        clients = self.hub.clients()
        for client in clients:
            client.close("resync", CLOSE_TRY_AGAIN_LATER)
        self.resyncs += 1
        log.error("bus: seqs %d..%d never reached this worker; %d client(s) closed to resume (reason resync), "
                  "%d cached events dropped", first, last, len(clients), dropped)

    @property
    def publish_max_events(self) -> int | None:
        """The most events one POST /publish may carry (None: no bound beyond the body's size)."""
        return self.bus.batch_max if self.clustered else None

    def publish_frame(self, body: bytes) -> list[int]:
        """POST /publish: the seqs the frame's events really got (NoLeader when nobody can number them)."""
        if self.leadership is not None:
            return self.leadership.publish(body, self.now_ms())
        events, _ = self.ingest.publish(body, self.now_ms())
        return [ev.seq for ev in events]

    def _persist(self, events: list[Event]) -> None:
        if not self.clustered:
            try:
                self.seq_state.ensure(self.epoch, events[-1].seq)
            except OSError as exc:
                # DATA_DIR is full or failing: the events still go to the writer (and the store
                # or spool), and the write is tried again with the next batch. Until it works, a
                # crash could reuse seqs: /health says so.
                if self.state_error is None:
                    log.error("cannot extend the seq reservation in %s: %s", self.seq_state.path, exc)
                self.state_error = f"seq reservation not saved ({exc.strerror or exc})"
            else:
                if self.state_error is not None:
                    log.info("the seq reservation is saved again")
                    self.state_error = None
        self.writer.enqueue(events)

    def _on_written(self, rows: int, seconds: float) -> None:
        self.metrics.store_rows.inc(rows)
        self.metrics.store_batch_rows.observe(rows)
        self.metrics.store_insert_seconds.observe(seconds)

    def _on_dropped(self, first: int, last: int) -> None:
        """A batch could be neither spooled nor stored: remember its range for resuming clients
        (in Redis when clustered, so that every worker reports it)."""
        if self.clustered:
            try:
                self.bus.add_hole(self.stream_epoch, first, last)
                return
            except REDIS_FAILURES as exc:
                log.error("could not record the dropped range %d..%d in Redis: %s", first, last, exc)
        try:
            call_in_thread(self.seq_state.add_hole, self.stream_epoch, first, last)
        except OSError as exc:  # likely the same full disk: the range is still known until a restart
            log.error("could not save the dropped range %d..%d to %s: %s", first, last, self.seq_state.path, exc)

    def store_holes(self) -> list[tuple[int, int]]:
        """Seq ranges of the current epoch that the store lacks for good (see handlers/holes.py)."""
        state = self.seq_state
        shared = None
        if self.clustered:
            try:
                shared = self.bus.holes(self.stream_epoch)
            except REDIS_FAILURES as exc:
                log.warning("could not read the store's holes from Redis: %s", exc)
        return holes_to_report(self.stream_epoch, state.epoch if state else None, state.holes if state else [], shared)

    def _between_chunks(self) -> None:
        """Between two parts of one large upstream frame (webapp/ingest.py): a turn of the loop (timers such
        as the lease's renewal, sockets; sleep(0) would not poll), and a clustered leader waits for room in
        its bus outbox as it does between reads."""
        self.upstream.held_while(self._turn_between_chunks)

    def _turn_between_chunks(self) -> None:
        gevent.sleep(0.001)
        if self.clustered:
            self.bus.wait_for_room()

    def _on_delivered(self, transport: str, frames: int, events: int) -> None:
        self.delivered += events
        self.metrics.delivered(transport, frames, events)

    def _on_upstream_statuses(self, statuses: list[dict], recv_ms: int) -> None:
        for message in statuses:
            # an upstream's text: bounded, and its line once per 10 s (an audit: 148,000 lines, 160 MB of
            # log in 6 s from a flood of 1 KB statuses; 3 MB messages made /health 66 MB)
            kept = {"status": _bounded(message["status"]), "message": _bounded(message.get("message", ""))}
            self.upstream_statuses.append({**kept, "at": recv_ms / 1000})
            problem = status_problem(kept)
            if problem is not None:
                self.upstream.state.last_error = problem  # the monitor shows it as the upstream's error
                held = self._said.allow("upstream_status")
                if held is not None:
                    log.warning("%s%s", printable(problem), held_note(held))
        del self.upstream_statuses[:-STATUS_HISTORY]
        self.subs.upstream_statuses(statuses, recv_ms)

    def _on_upstream_state(self, state) -> None:
        if not state.connected:
            self.subs.disconnected()

    # -- views -------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    @property
    def last_seq(self) -> int:
        """The last seq this worker's cache and clients have (what snapshots stand on)."""
        return self.bus.last_seq

    @property
    def stream_epoch(self) -> str:
        return self.bus.epoch or self.epoch

    # the /health and /metrics views live in webapp/health.py: read-only projections of the parts
    def health(self) -> dict:
        return views.health(self)

    def render_metrics(self) -> bytes:
        return views.render_metrics(self)


def _bounded(value):
    """A status field as kept: text cut at STATUS_TEXT_MAX characters (anything else, as its text)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= STATUS_TEXT_MAX else text[:STATUS_TEXT_MAX] + "..."
