"""When the hub may start its next flush: at once while idle or within its share, else when its credit allows.

A flush costs one write per client whatever the number of events, so the hub
bounds flushes, not events: flushing may take `share_max` of the worker over
time, and a large audience gets bigger batches instead of a saturated process.
The share is a credit (a token bucket): it grows by `share_max` seconds per
second, up to `burst_s`, and each flush spends its cost; a flush waits only
while the credit is below zero. An optional floor spaces flush starts as well.
The clock is passed in: any monotonic seconds.

Measured (docs/benchmarks.md, "Light-load tail, fifth session"): the rule
before this one spaced every flush from the last one alone (`cost / share_max`
after its start). Near the share (100 clients x 500 events/s, 1000 x 50 on a
2-core VM, ~40 % of a core either way) one slow flush (the worker descheduled
mid-flush) held the next event back although the next would have gone alone
anyway: events were delayed without being batched, the relay's p50 2.0-2.4 ms
against nchan's 0.6-0.8 ms at 100 x 500. The credit absorbs such a flush; only
a load whose flushing really needs more than the share batches, as before.
The cost the hub passes is the worker thread's CPU time in the flush, not its
wall time, so time spent descheduled is not counted as flushing.
"""

FLUSH_SHARE_MAX = 0.4  # of the worker's time spent flushing, at most, over time
FLUSH_BURST_S = 0.025  # flush time the credit may hold: ~2-3 flushes to 1000 clients


class FlushPacer:
    """The flush credit and the last flush's start, and what they allow."""

    __slots__ = ("floor_s", "share_max", "burst_s", "_last_start_s", "_credit_s", "_credit_at_s")

    def __init__(self, floor_s: float = 0.0, share_max: float = FLUSH_SHARE_MAX, burst_s: float = FLUSH_BURST_S):
        self.floor_s = floor_s
        self.share_max = share_max
        self.burst_s = burst_s
        self._last_start_s = float("-inf")
        self._credit_s = burst_s  # flush time that may be spent without waiting, as of `_credit_at_s`
        self._credit_at_s = float("-inf")

    def credit_s(self, now_s: float) -> float:
        """The credit at `now_s` (below zero: the flushes so far went past the share)."""
        grown = (now_s - self._credit_at_s) * self.share_max if now_s > self._credit_at_s else 0.0
        return min(self.burst_s, self._credit_s + grown)

    def next_start_s(self) -> float:
        """The earliest time the next flush may start."""
        at = self._last_start_s + self.floor_s
        if self._credit_s < 0:
            at = max(at, self._credit_at_s - self._credit_s / self.share_max)
        return at

    def delay_s(self, now_s: float) -> float:
        """How long a flush wanted at `now_s` must wait (0: it may start now)."""
        return max(0.0, self.next_start_s() - now_s)

    def flushed(self, start_s: float, cost_s: float) -> float:
        """A flush started at `start_s` and cost `cost_s` seconds of the worker; returns the cost counted."""
        cost_s = max(0.0, cost_s)
        self._credit_s = self.credit_s(start_s) - cost_s
        self._credit_at_s = start_s
        self._last_start_s = start_s
        return cost_s
