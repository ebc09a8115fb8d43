"""When the hub may start its next flush: at once while idle, else spaced by what the last flush cost.

A flush costs one write per client whatever the number of events, so the hub
bounds flushes, not events: two flushes start at least `floor_s` apart, and at
least `cost / share_max` apart, so flushing takes at most `share_max` of the
worker and a large audience gets bigger batches instead of a saturated process.
An event that arrives after that much quiet goes out at once (webapp/hub.py
flushes it in the publisher's greenlet). The clock is passed in: any monotonic
seconds.
"""

FLUSH_SHARE_MAX = 0.4  # of the worker's time spent flushing, at most


class FlushPacer:
    """The last flush's start and cost, and what they allow."""

    __slots__ = ("floor_s", "share_max", "_last_start_s", "_last_cost_s")

    def __init__(self, floor_s: float = 0.0, share_max: float = FLUSH_SHARE_MAX):
        self.floor_s = floor_s
        self.share_max = share_max
        self._last_start_s = float("-inf")
        self._last_cost_s = 0.0

    def next_start_s(self) -> float:
        """The earliest time the next flush may start."""
        return self._last_start_s + max(self.floor_s, self._last_cost_s / self.share_max)

    def delay_s(self, now_s: float) -> float:
        """How long a flush wanted at `now_s` must wait (0: it may start now)."""
        return max(0.0, self.next_start_s() - now_s)

    def flushed(self, start_s: float, end_s: float) -> float:
        """A flush ran from `start_s` to `end_s`; returns its cost in seconds."""
        self._last_start_s = start_s
        self._last_cost_s = max(0.0, end_s - start_s)
        return self._last_cost_s
