"""The one ingest path: receive → parse → number → cache → publish → persist."""

import logging
import time
from typing import Callable

from handlers.cache import EventCache
from handlers.events import Event, number_elements
from handlers.frames import parse_frame
from webapp.hub import Hub
from webapp.metrics import Metrics

log = logging.getLogger(__name__)


class Ingest:
    """Turns frames into numbered events and hands them on; never blocks, never yields.

    Upstream frames and POST /publish both come through `handle_frame`, so seq
    assignment is one sequence without a lock: nothing here switches greenlets.
    """

    def __init__(self, cache: EventCache, hub: Hub, metrics: Metrics, *,
                 topic_fields: tuple[str, ...], max_frame_bytes: int, last_seq: int = 0,
                 persist: Callable[[list[Event]], None] | None = None):
        self.cache = cache
        self.hub = hub
        self.metrics = metrics
        self.topic_fields = topic_fields
        self.max_frame_bytes = max_frame_bytes
        self.last_seq = last_seq
        self.parse_errors = 0
        self.oversize_frames = 0
        self.upstream_events = 0
        self.persist = persist

    def handle_frame(self, payload: bytes | str, binary: bool, recv_ms: int,
                     source: str = "upstream") -> list[Event]:
        parsed = parse_frame(payload, binary=binary, max_bytes=self.max_frame_bytes)
        if parsed.oversize:
            self.oversize_frames += 1
            self.metrics.oversize_frames.inc()
            log.warning("skipped a %s frame: %s", source, parsed.parse_error)
            return []
        if parsed.parse_error is not None:
            self.parse_errors += 1
            self.metrics.parse_errors.inc()
        events = number_elements(list(parsed.elements), self.last_seq + 1, recv_ms, self.topic_fields)
        if not events:
            return events
        self.last_seq = events[-1].seq
        if source == "upstream":
            self.upstream_events += len(events)
        self.cache.add(events, recv_ms)
        self.hub.publish(events)
        if self.persist is not None:
            self.persist(events)
        self.metrics.events_in.labels(source).inc(len(events))
        return events


def now_ms() -> int:
    return int(time.time() * 1000)
