"""The hub: who is subscribed to what, and one flusher that batches events into shared frames.

Each flush groups clients by subscription, serializes each group's batch once
per wire format, and hands the same bytes to every client of the group; a
client writes them without a greenlet switch unless its socket is full (see
wire.py).

Pacing: what a flush costs is one write per client, whatever the number of
events (a loopback write costs ~10 µs of kernel time on its own), so the hub
bounds flushes, not events. Two flushes start at least the flush interval
apart, and at least 2.5 times the last flush's duration apart: the flusher
takes at most 40 % of the worker, and a large audience gets bigger batches
instead of a saturated process (bench/ab.py, 2 rounds, quiet machine: at
1000 x 200 and 1000 x 500 the worker used 40-41 % of a core instead of 48-49 %
at twice the duration; p99 33-44 ms either way). An event that arrives when the hub
has been quiet for that long goes out at once.
"""

import logging
import time
from typing import Callable, Protocol

import gevent
from gevent.event import Event as Signal

from handlers.events import Event
from handlers.topics import Matcher, compile_patterns

log = logging.getLogger(__name__)

FLUSH_SHARE_MAX = 0.4  # of the worker's time spent flushing, at most


class Subscriber(Protocol):
    """What the hub needs of a client (a /ws, /sse or Polygon connection)."""

    kind: str                 # wire format: frames are built once per kind per group
    matcher: Matcher
    after_seq: int            # events up to this seq were sent in its snapshot

    def encode(self, events: list[Event]) -> bytes: ...
    def deliver(self, frame: bytes, n_events: int) -> None: ...
    def close(self, reason: str, code: int) -> None: ...


class Group:
    """Clients with the same patterns; `by_kind` is their snapshot per wire format, rebuilt after a change."""

    __slots__ = ("matcher", "clients", "_by_kind")

    def __init__(self, matcher: Matcher):
        self.matcher = matcher
        self.clients: set = set()
        self._by_kind: dict[str, tuple] | None = None

    def changed(self) -> None:
        self._by_kind = None

    def by_kind(self) -> dict[str, tuple]:
        if self._by_kind is None:
            kinds: dict[str, list] = {}
            for client in self.clients:
                kinds.setdefault(client.kind, []).append(client)
            self._by_kind = {kind: tuple(clients) for kind, clients in kinds.items()}
        return self._by_kind


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
        group.changed()
        self.clients_by_kind[client.kind] = self.clients_by_kind.get(client.kind, 0) + 1

    def remove(self, client: Subscriber) -> None:
        key = client.matcher.patterns
        group = self._groups.get(key)
        if group is None or client not in group.clients:
            return
        group.clients.discard(client)
        group.changed()
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
        last_start, last_cost = float("-inf"), 0.0
        while True:
            self._wake.wait()
            delay = last_start + max(self.flush_interval_s, last_cost / FLUSH_SHARE_MAX) - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            self._wake.clear()
            batch, self._pending = self._pending, []
            last_start = time.perf_counter()
            self.flush(batch)
            last_cost = time.perf_counter() - last_start
            self._on_flush(last_cost)

    def flush(self, batch: list[Event]) -> None:
        if not batch:
            return
        first_seq = batch[0].seq
        for group in list(self._groups.values()):
            match = group.matcher
            events = batch if match.everything else [e for e in batch if match(e.topic)]
            if not events:
                continue
            n_events = len(events)
            # The loop below runs once per client per flush: it is the relay's hot path.
            # A snapshot tuple, so a client that leaves during the flush disturbs nobody.
            for kind, clients in group.by_kind().items():
                frame = None
                n_clients = 0
                for client in clients:
                    if client.after_seq >= first_seq:  # joined mid-batch: skip what its snapshot had
                        late = [e for e in events if e.seq > client.after_seq]
                        if late:
                            client.deliver(client.encode(late), len(late))
                        continue
                    if frame is None:
                        frame = client.encode(events)
                    client.deliver(frame, n_events)
                    n_clients += 1
                if n_clients:
                    self._on_delivered(kind, n_clients, n_clients * n_events)

    def restart_seq(self) -> None:
        """A new epoch: seqs start over, so no client's snapshot covers any of them."""
        for client in self.clients():
            client.after_seq = 0

    def close_all(self, reason: str, code: int) -> None:
        """Tell every client why and close it (shutdown)."""
        self.closing = True
        for client in self.clients():
            client.close(reason, code)
