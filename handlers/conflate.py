"""Latest-value-wins delivery (contract §12): per-topic newest events, released at most `max_hz` times a second.

`Latest` keeps the newest event of each topic and counts the ones it replaced;
`Conflator` releases a `Latest` on a clock: at once when nothing was released
for an interval, else at the next interval boundary. One release holds at
most one event per topic, releases are an interval apart, and a release only
holds events that arrived after the previous one's, so delivered events stay
in seq order across releases and every topic's newest event goes out at most
one interval after it arrived, even if the topic then goes quiet.

One `Conflator` serves a whole group of clients with the same subscription
and rate (the hub builds each release's frame once for all of them). The
clock comes in as an argument (`now_s`, any monotonic seconds); the hub says
when a release's writes ended (`sent`), and the interval runs from there, so
it holds at every client's socket, not only between decisions.
"""

import re
from dataclasses import dataclass
from typing import Iterable

from handlers.events import Event

MAX_HZ = 1000.0


class RateError(ValueError):
    """A `max_hz` that is not a number in (0, MAX_HZ]."""


# a number as text in a query or a message: what Python's float() takes less spaces, '_', '+', other
# scripts' digits, inf and nan
DECIMAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_max_hz(value: object) -> float | None:
    """A client's `max_hz` (a number or its text; None or "" = every event) as a float in (0, 1000]."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RateError("'max_hz' must be a number of events per second per topic")
    if isinstance(value, str):
        if len(value) > 32 or not DECIMAL.fullmatch(value) or not 0 < float(value) <= MAX_HZ:
            # the text as given: float() also takes '1_0', ' 1', 'inf' (and 1000.0001 would print as 1000)
            raise RateError(f"'max_hz' must be a number in (0, {MAX_HZ:g}], got {value[:32]!r}")
        value = float(value)
    if not isinstance(value, (int, float)):
        raise RateError("'max_hz' must be a number of events per second per topic")
    rate = float(value)
    if not 0 < rate <= MAX_HZ:  # NaN fails this too
        raise RateError(f"'max_hz' must be in (0, {MAX_HZ:g}], got {rate!r}")  # not :g (1000.0000000000001 showed as 1000)
    return rate


@dataclass(frozen=True, slots=True)
class Release:
    """What goes out now: events in seq order, and how many matching events were replaced since the last one."""

    events: list[Event]
    conflated: int


class Latest:
    """The newest event of each topic since the last `take`, and how many were replaced."""

    __slots__ = ("_by_topic", "replaced")

    def __init__(self) -> None:
        self._by_topic: dict[str, Event] = {}
        self.replaced = 0

    def offer(self, events: Iterable[Event]) -> None:
        """Keep each event (ascending seq) as its topic's newest; an older one held is replaced."""
        held = self._by_topic
        before = len(held)
        n = 0
        for ev in events:
            held[ev.topic] = ev
            n += 1
        self.replaced += n - (len(held) - before)

    def __bool__(self) -> bool:
        return bool(self._by_topic)

    def __len__(self) -> int:
        return len(self._by_topic)

    def peek(self) -> Release:
        """What `take` would give, leaving it held."""
        return Release(sorted(self._by_topic.values(), key=_seq), self.replaced)

    def take(self) -> Release:
        """Everything held, ascending seq, with the replaced count; both reset."""
        events = sorted(self._by_topic.values(), key=_seq)
        release = Release(events, self.replaced)
        self._by_topic = {}
        self.replaced = 0
        return release


def _seq(ev: Event) -> int:
    return ev.seq


class Conflator:
    """`Latest` released at most once per interval (1 / max_hz seconds)."""

    __slots__ = ("max_hz", "interval_s", "_latest", "_last_release_s", "max_held")

    def __init__(self, max_hz: float, max_held: int | None = None):
        self.max_hz = max_hz
        self.interval_s = 1.0 / max_hz
        self._latest = Latest()
        self._last_release_s = float("-inf")
        # past this many topics held, the release goes at once: a rate as low as 1e-300 Hz (an interval
        # without end) over topics without end would hold every one of them (None: no bound)
        self.max_held = max_held

    def offer(self, events: Iterable[Event]) -> None:
        self._latest.offer(events)

    @property
    def last_release_s(self) -> float:
        """When the last release was written (-inf: none yet); the next goes out an interval later."""
        return self._last_release_s

    def start_after(self, last_release_s: float, held: Release | None = None) -> None:
        """A new conflator for a client that changed its subscription: its rate runs from its last release
        (`last_release_s`), not from now, and it holds what its old one held for it (`held`, with its count)."""
        self._last_release_s = last_release_s
        if held is not None:
            self._latest.offer(held.events)
            self._latest.replaced += held.conflated

    def held(self) -> Release:
        """What the next release holds so far (left held)."""
        return self._latest.peek()

    def due_at(self) -> float | None:
        """When the held events go out (None: nothing held)."""
        if not self._latest:
            return None
        if self.max_held is not None and len(self._latest) > self.max_held:
            return self._last_release_s  # now
        return self._last_release_s + self.interval_s

    def take(self, now_s: float) -> Release | None:
        """The release due at `now_s`, or None (nothing held, or the interval has not passed)."""
        if not self._latest or (now_s < self._last_release_s + self.interval_s
                                and (self.max_held is None or len(self._latest) <= self.max_held)):
            return None
        self._last_release_s = now_s
        return self._latest.take()

    def sent(self, end_s: float) -> None:
        """The release taken last was written to every client by `end_s`: the next one waits an interval
        from then, so each client's writes, not only the decisions, are an interval apart (timed from
        the decision, a release written after a 900-client flush's live writes and the next one
        written at once were 487 ms apart at the relay, 3 within one second at a 2 Hz client)."""
        if end_s > self._last_release_s:
            self._last_release_s = end_s
