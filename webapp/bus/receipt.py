"""What a caller of POST /publish waits on: the seqs the append script gives its events, or why none."""

import gevent
from gevent.event import AsyncResult


class NoLeader(Exception):
    """POST /publish cannot be served: no leader is known, or it did not answer in time."""


class Unconfirmed(NoLeader):
    """The events went into an append call whose answer never came: they may or may not be in the stream."""


class Receipt:
    """What the append script gave one group of events: their real seqs (or why none)."""

    def __init__(self, count: int):
        self.count = count
        self._done = AsyncResult()
        self.taken = False  # in an append call: it can no longer be withdrawn
        self.withdrawn = False

    def set(self, first: int) -> None:
        self._done.set(list(range(first, first + self.count)))

    def fail(self, reason: str) -> None:
        self._done.set_exception(NoLeader(reason))

    def seqs(self, timeout_s: float) -> list[int]:
        try:
            return self._done.get(timeout=timeout_s)
        except gevent.Timeout:
            if not self.taken:
                self.withdrawn = True  # never appended: the caller is told so, and it stays true
                raise NoLeader(f"the events got no seq within {timeout_s:g} s (Redis unavailable?)") from None
            raise Unconfirmed(f"the append was not confirmed within {timeout_s:g} s (Redis unavailable?); "
                           "the events may still be published") from None

