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

The worker's budget (optional, `worker_share_max`): a second credit, grown by
`worker_share_max` seconds per second and spent by ALL the worker's CPU time
(ingest, pings, the flushes themselves: a cumulative CPU clock passed to
`delay_s`). A flush may start when either credit allows it; one that only the
worker's credit allowed is not charged to the flush credit. So flushing always
gets its own share (however busy the rest of the worker is), and may take more
while the whole worker stays within its budget: at light load, where the rest
costs little, the flushes get most of the budget; under load the worker as a
whole is held to it. Measured (docs/benchmarks.md, "Light load, sixth
session"): at 1000 x 50 a flush costs ~8.4 ms of CPU, 42 % of a core at 50
events/s, just above the flush share of 40 %, so events queued for the credit
while the worker as a whole used ~44 %; at 1000 x 200 the rest of the worker
is ~4 %, so a budget of 48 % keeps the worker under the target's 50 %.
"""

FLUSH_SHARE_MAX = 0.4  # of the worker's time spent flushing, at most, over time (the flush credit)
FLUSH_BURST_S = 0.025  # flush time the credit may hold: ~2-3 flushes to 1000 clients
WORKER_SHARE_MAX = 0.48  # of a core the whole worker may use before flushing is held to its own share
# a credit computed with floats at the moment it reaches zero may come out a hair below it
# (-1e-18): counted as zero, not as a wait too short to pass on the clock
_SLACK_S = 1e-9


class FlushPacer:
    """The flush credit and the last flush's start, and what they allow."""

    __slots__ = ("floor_s", "share_max", "burst_s", "worker_share_max", "_last_start_s", "_credit_s",
                 "_credit_at_s", "_worker_credit_s", "_worker_at_s", "_worker_cpu_s")

    def __init__(self, floor_s: float = 0.0, share_max: float = FLUSH_SHARE_MAX, burst_s: float = FLUSH_BURST_S,
                 worker_share_max: float = 0.0):
        self.floor_s = floor_s
        self.share_max = share_max
        self.burst_s = burst_s
        self.worker_share_max = worker_share_max  # 0: no worker budget, flushing has its own share only
        self._last_start_s = float("-inf")
        self._credit_s = burst_s  # flush time that may be spent without waiting, as of `_credit_at_s`
        self._credit_at_s = float("-inf")
        self._worker_credit_s = burst_s  # the worker's CPU time that may be spent, as of `_worker_at_s`
        self._worker_at_s: float | None = None
        self._worker_cpu_s = 0.0

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

    def delay_s(self, now_s: float, worker_cpu_s: float | None = None) -> float:
        """How long a flush wanted at `now_s` must wait (0: it may start now).

        `worker_cpu_s`: the worker's CPU seconds so far (a cumulative clock), noted against
        its budget. The wait given for the worker's credit assumes the worker does nothing
        else meanwhile: ask again after it (the flush credit's own wait is the longest)."""
        if self.worker_share_max and worker_cpu_s is not None:
            self._note_worker(now_s, worker_cpu_s)
        own = max(0.0, self.next_start_s() - now_s)
        if own == 0.0 or self._worker_at_s is None or not self.worker_share_max:
            return own
        floor = max(0.0, self._last_start_s + self.floor_s - now_s)
        if self._worker_credit_s >= -_SLACK_S:
            return floor
        return min(own, max(floor, -self._worker_credit_s / self.worker_share_max))

    def worker_credit_s(self) -> float:
        """The worker's credit as last noted (below zero: the worker went past its budget)."""
        return self._worker_credit_s

    def _note_worker(self, now_s: float, cpu_s: float) -> None:
        if self._worker_at_s is not None:
            grown = max(0.0, now_s - self._worker_at_s) * self.worker_share_max
            spent = max(0.0, cpu_s - self._worker_cpu_s)
            # bounded below too: after a busy spell, the budget is back within burst / share
            self._worker_credit_s = max(-self.burst_s, min(self.burst_s, self._worker_credit_s + grown - spent))
        if self._worker_at_s is None or now_s >= self._worker_at_s:
            self._worker_at_s, self._worker_cpu_s = now_s, cpu_s

    def flushed(self, start_s: float, cost_s: float) -> float:
        """A flush started at `start_s` and cost `cost_s` seconds of the worker; returns the cost counted
        against the flush credit (none when only the worker's budget allowed the flush)."""
        cost_s = max(0.0, cost_s)
        own = self.credit_s(start_s)
        if own < -_SLACK_S and self.worker_share_max and self._worker_at_s is not None:  # before its own credit allowed it
            cost_s = 0.0
        self._credit_s = own - cost_s
        self._credit_at_s = start_s
        self._last_start_s = start_s
        return cost_s
