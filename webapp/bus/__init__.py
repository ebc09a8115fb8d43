"""The event bus: how numbered events travel from the one ingest to every worker's cache and hub.

The logic lives once in `Bus` (ordering, duplicate and gap checks, delivery);
each transport only publishes and listens — the shape of python-socketio's
PubSubManager. `MemoryBus` is the single-process case; `RedisBus` carries
events through a Redis Stream to every worker on every host.
"""

import logging
from typing import Callable

from handlers.events import Event

log = logging.getLogger(__name__)


class Bus:
    """Delivers each event to this worker exactly once, in seq order."""

    backend = "memory"

    def __init__(self, deliver: Callable[[list[Event]], None]):
        self.deliver = deliver
        self.last_seq = 0  # the last seq delivered to this worker
        self.epoch: str | None = None
        self.gaps = 0
        self.ok = True
        # a new seq space: the worker drops what it holds of the old one before the first new event
        self.on_epoch: Callable[[str], None] = lambda epoch: None
        # seqs first..last of this epoch never reached this worker (trimmed from the stream before its
        # reader got to them): called before the events after them are delivered
        self.on_gap: Callable[[int, int], None] = lambda first, last: None

    def publish(self, events: list[Event], epoch: str) -> None:
        raise NotImplementedError

    def received(self, events: list[Event], epoch: str | None) -> None:
        """Called by the transport with events in publish order; drops what was already delivered."""
        if epoch is not None and epoch != self.epoch:
            if self.epoch is not None:
                # seq continuity was lost (a new leader with no store and no stream to go on):
                # the new space's seqs start over, and are not "already delivered"
                log.warning("bus: epoch changed from %s to %s; seq starts over", self.epoch, epoch)
                self.last_seq = 0
                self.epoch = epoch
                self.on_epoch(epoch)
            self.epoch = epoch
        fresh = [e for e in events if e.seq > self.last_seq]
        if not fresh:
            return
        if self.last_seq and fresh[0].seq != self.last_seq + 1:
            self.gaps += 1
            log.warning("bus: seq jumped from %d to %d", self.last_seq, fresh[0].seq)
            self.on_gap(self.last_seq + 1, fresh[0].seq - 1)
        self.last_seq = fresh[-1].seq
        self.deliver(fresh)


class MemoryBus(Bus):
    """One process: publishing is delivering."""

    def publish(self, events: list[Event], epoch: str) -> None:
        self.received(events, epoch)
