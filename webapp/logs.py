"""Log lines that could repeat per frame or per event, held to one per interval per kind."""

import time
from typing import Callable


class Throttle:
    """`allow(key)` is None while a line of that kind was written within `interval_s`; otherwise it is
    the number of lines held back since the last one (write the line, and say how many were held)."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


def held_note(held: int) -> str:
    return f" ({held} more like it since the last line)" if held else ""


def printable(text: str, limit: int = 300) -> str:
    """Text from outside (a request's path, an upstream's message) as a log line may carry it: ASCII,
    control characters and the rest escaped, so it cannot end the line (a forged one after it) or send
    a terminal escape to whoever tails the log; cut at `limit` characters."""
    return text[:limit].encode("unicode_escape").decode("ascii") + ("..." if len(text) > limit else "")
