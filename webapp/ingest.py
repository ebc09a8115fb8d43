"""The one ingest path: receive → parse → fetch what enrichment needs → number → publish → persist."""

import logging
import time
from typing import Callable

import gevent
import gevent.queue
from gevent.event import AsyncResult

from handlers.events import Event, number_elements, topics_of
from handlers.frames import parse_frame
from handlers.polygon import split_statuses
from webapp.logs import Throttle, held_note
from webapp.metrics import Metrics

log = logging.getLogger(__name__)

# Elements of one upstream frame numbered and handed on in one piece, at most. A 3 MB frame can hold
# 1.5 M elements: in one piece that held the loop ~5 s, a cluster leader lost its lease meanwhile (its
# renewal could not run) and the one append of 1.5 M events was cut off with it (an outside audit).
INGEST_CHUNK = 5000


class Ingest:
    """Turns frames into numbered events and hands them on.

    Without enrichment, `submit_frames` handles frames at once and never yields, so
    seq assignment needs no lock. With enrichment, frames go through a queue to
    one ingest greenlet, which may wait (bounded) for enrichment results: the
    upstream reader only enqueues and never waits on it.
    """

    def __init__(self, publish: Callable[[list[Event]], None], metrics: Metrics, *,
                 topic_fields: tuple[str, ...], max_frame_bytes: int, last_seq: int = 0,
                 persist: Callable[[list[Event]], None] | None = None, enricher=None,
                 on_statuses: Callable[[list[dict], int], None] | None = None, queue_max: int = 100_000):
        self.publish_events = publish  # to the bus: every worker's cache and hub
        self.metrics = metrics
        # upstream frames, and events numbered per source: plain ints on the hot path, read by
        # /metrics when it is scraped (a labelled, locked Counter inc per frame cost ~6 % of the
        # worker at 20,000 frames/s)
        self.upstream_frames = 0
        self.numbered: dict[str, int] = {}
        self.topic_fields = topic_fields
        self.max_frame_bytes = max_frame_bytes
        self.last_seq = last_seq
        self.parse_errors = 0
        self.oversize_frames = 0
        self.persist = persist
        self.enricher = enricher
        self.on_statuses = on_statuses  # Polygon status messages: shown, never numbered
        self._queue: gevent.queue.Queue | None = gevent.queue.Queue() if enricher is not None else None
        # past this many queued frames the ingest stops waiting for enrichment (frames go out with
        # what is cached, counted), so the queue drains at the speed of the plain path
        self.queue_max = queue_max
        self.unenriched = 0  # frames handled without waiting because the queue was full
        # between two INGEST_CHUNKs of one frame: let the loop run (timers, the lease) and wait for room
        # (the runtime sets it; None: a frame's elements go in one piece)
        self.between_chunks: Callable[[], None] | None = None
        self._said = Throttle()  # lines that could come once per frame

    def submit_frames(self, frames: list[tuple[bytes, bool]], recv_ms: int) -> int:
        """Hand on every frame of one upstream read together: numbered in order, then cached,
        published, persisted and counted once for all of them (per frame, that bookkeeping costs
        as much as parsing). Returns how many events they made (0 when queued)."""
        self.upstream_frames += len(frames)
        if self._queue is None:
            return len(self.handle_frames(frames, recv_ms))
        for payload, binary in frames:
            self._queue.put((payload, binary, recv_ms, "upstream", None))
        return 0

    def publish(self, payload: bytes, recv_ms: int) -> tuple[list[Event], object]:
        """POST /publish: like an upstream frame, but the caller waits for its events, and gets
        what the bus gave back for them (with Redis, a receipt that yields their real seqs)."""
        if self._queue is None:
            return self._handle(((payload, False),), recv_ms, "publish", receipt=True)
        done = AsyncResult()
        self._queue.put((payload, False, recv_ms, "publish", done))
        return done.get()

    def run(self) -> None:
        """The ingest greenlet (only when enrichment is on).

        A frame leaves the queue only once handled: a run that dies while it waits
        for enrichment (before numbering) is restarted by the supervisor and
        handles the same frame again, so nothing is lost or numbered twice."""
        while True:
            payload, binary, recv_ms, source, done = self._queue.peek()
            wait = self._queue.qsize() < self.queue_max
            if not wait:
                self.unenriched += 1
                self.metrics.bound_hits.labels("enrich_queue").inc()
                held = self._said.allow("enrich_queue")
                if held is not None:
                    log.warning("ingest queue at ENRICH_QUEUE_MAX (%d): frames go out without waiting for "
                                "enrichment%s", self.queue_max, held_note(held))
            handled = self._handle(((payload, binary),), recv_ms, source, receipt=done is not None, wait=wait)
            self._queue.get()
            if done is not None:
                done.set(handled)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def handle_frame(self, payload: bytes | str, binary: bool, recv_ms: int,
                     source: str = "upstream") -> list[Event]:
        return self.handle_frames(((payload, binary),), recv_ms, source)

    def handle_frames(self, frames, recv_ms: int, source: str = "upstream", wait: bool = True) -> list[Event]:
        """Frames received together (one read, or one request) into events, handed on as one batch."""
        return self._handle(frames, recv_ms, source, wait=wait)[0]

    def _handle(self, frames, recv_ms: int, source: str, receipt: bool = False,
                wait: bool = True) -> tuple[list[Event], object]:
        elements: list = []
        for payload, binary in frames:
            parsed = parse_frame(payload, binary=binary, max_bytes=self.max_frame_bytes)
            if parsed.oversize:
                self.skipped_oversize(len(payload), source)
                continue
            if parsed.parse_error is not None:
                self.parse_errors += 1
                self.metrics.parse_errors.inc()
            market, statuses = split_statuses(parsed.elements)
            if statuses and self.on_statuses is not None:
                self.on_statuses(statuses, recv_ms)
            elements.extend(market)
        enrichment = None
        if self.enricher is not None and elements:
            enrichment = self.enricher.values_for(topics_of(elements, self.topic_fields), wait)
        if receipt or len(elements) <= INGEST_CHUNK or self.between_chunks is None:
            return self._number(elements, recv_ms, source, receipt, enrichment)
        # a frame's events stay in order; another source's (POST /publish) may come between two chunks
        events: list[Event] = []
        for start in range(0, len(elements), INGEST_CHUNK):
            if start:
                self.between_chunks()
            events += self._number(elements[start:start + INGEST_CHUNK], recv_ms, source, False, enrichment)[0]
        return events, None

    def _number(self, elements: list, recv_ms: int, source: str, receipt: bool,
                enrichment) -> tuple[list[Event], object]:
        # no yield from here to the end: seqs are handed out in one piece
        events = number_elements(elements, self.last_seq + 1, recv_ms, self.topic_fields, enrichment)
        if not events:
            return events, None
        self.last_seq = events[-1].seq
        ticket = self.publish_events(events, receipt) if receipt else self.publish_events(events)
        if self.persist is not None:
            self.persist(events)
        self.numbered[source] = self.numbered.get(source, 0) + len(events)
        return events, ticket

    def skipped_oversize(self, length: int, source: str = "upstream") -> None:
        """A frame over UPSTREAM_MAX_FRAME_BYTES was skipped (by the reader, from its header, or here)."""
        self.oversize_frames += 1
        self.metrics.oversize_frames.inc()
        held = self._said.allow("oversize")
        if held is not None:
            log.warning("skipped a frame from %s of %d bytes (over %d)%s", source, length, self.max_frame_bytes,
                        held_note(held))

    @property
    def upstream_events(self) -> int:
        return self.numbered.get("upstream", 0)


def now_ms() -> int:
    return int(time.time() * 1000)
