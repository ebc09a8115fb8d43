"""The hub: who is subscribed to what, and one flusher that batches events into shared frames.

Events published by the ingest loop wait at most one flush interval. Each flush
groups clients by subscription, serializes each group's batch once per wire
format, and hands the same bytes to every client of the group; a client writes
them without a greenlet switch unless its socket is full (see wire.py).
"""

import logging
import time
from typing import Callable, Protocol

import gevent
from gevent.event import Event as Signal

from handlers.events import Event
from handlers.topics import Matcher, compile_patterns

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """What the hub needs of a client (a /ws, /sse or Polygon connection)."""

    kind: str                 # wire format: frames are built once per kind per group
    matcher: Matcher
    after_seq: int            # events up to this seq were sent in its snapshot

    def encode(self, events: list[Event]) -> bytes: ...
    def deliver(self, frame: bytes, n_events: int) -> None: ...
    def close(self, reason: str, code: int) -> None: ...


class Group:
    __slots__ = ("matcher", "clients")

    def __init__(self, matcher: Matcher):
        self.matcher = matcher
        self.clients: set = set()


class Hub:
    """Fan-out of published events to subscribers, batched per flush interval."""

    def __init__(self, flush_interval_ms: float, on_delivered: Callable[[str, int, int], None],
                 on_flush: Callable[[float], None] = lambda seconds: None):
        self.flush_interval_s = flush_interval_ms / 1000.0
        self._groups: dict[tuple[str, ...], Group] = {}
        self._pending: list[Event] = []
        self._wake = Signal()
        self._on_delivered = on_delivered  # (kind, frames, events) for metrics
        self._on_flush = on_flush  # seconds one flush took
        self.closing = False
        self.clients_by_kind: dict[str, int] = {}

    # -- membership (never yields: callers rely on this for snapshot atomicity) --

    def add(self, client: Subscriber) -> None:
        key = client.matcher.patterns
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(client.matcher)
        group.clients.add(client)
        self.clients_by_kind[client.kind] = self.clients_by_kind.get(client.kind, 0) + 1

    def remove(self, client: Subscriber) -> None:
        key = client.matcher.patterns
        group = self._groups.get(key)
        if group is None or client not in group.clients:
            return
        group.clients.discard(client)
        if not group.clients:
            del self._groups[key]
        self.clients_by_kind[client.kind] -= 1

    def resubscribe(self, client: Subscriber, patterns: tuple[str, ...]) -> None:
        self.remove(client)
        client.matcher = compile_patterns(patterns)
        self.add(client)

    @property
    def client_count(self) -> int:
        return sum(len(g.clients) for g in self._groups.values())

    def clients(self) -> list[Subscriber]:
        return [c for g in self._groups.values() for c in g.clients]

    # -- publishing -----------------------------------------------------------

    def publish(self, events: list[Event]) -> None:
        """Queue events for the next flush; never blocks."""
        if events:
            self._pending.extend(events)
            self._wake.set()

    def run(self) -> None:
        """The flusher loop: one greenlet per worker."""
        while True:
            self._wake.wait()
            if self.flush_interval_s:
                gevent.sleep(self.flush_interval_s)
            self._wake.clear()
            batch, self._pending = self._pending, []
            started = time.perf_counter()
            self.flush(batch)
            self._on_flush(time.perf_counter() - started)

    def flush(self, batch: list[Event]) -> None:
        if not batch:
            return
        first_seq = batch[0].seq
        for group in list(self._groups.values()):
            match = group.matcher
            events = batch if match.everything else [e for e in batch if match(e.topic)]
            if not events:
                continue
            frames: dict[str, bytes] = {}
            counts: dict[str, int] = {}
            for client in list(group.clients):
                if client.after_seq >= first_seq:  # joined mid-batch: skip what its snapshot had
                    late = [e for e in events if e.seq > client.after_seq]
                    if late:
                        client.deliver(client.encode(late), len(late))
                    continue
                frame = frames.get(client.kind)
                if frame is None:
                    frame = frames[client.kind] = client.encode(events)
                client.deliver(frame, len(events))
                counts[client.kind] = counts.get(client.kind, 0) + 1
            for kind, n_clients in counts.items():
                self._on_delivered(kind, n_clients, n_clients * len(events))

    def close_all(self, reason: str, code: int) -> None:
        """Tell every client why and close it (shutdown)."""
        self.closing = True
        for client in self.clients():
            client.close(reason, code)
