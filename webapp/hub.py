"""The hub: who is subscribed to what, and one flusher that batches events into shared frames.

Each flush groups clients by subscription, serializes each group's batch once
per wire format, and hands the same bytes to every client of the group; a
client writes them without a greenlet switch unless its socket is full (see
wire.py).

Pacing (handlers/flush.py): what a flush costs is one write per client,
whatever the number of events (a loopback write costs ~10 µs of kernel time on
its own), so the hub bounds flushes, not events. Two flushes start at least the
flush interval apart, and flushing takes at most 40 % of the worker over time
(a credit that each flush's CPU time spends): a large audience gets bigger
batches instead of a saturated process (bench/ab.py, 2 rounds, quiet machine:
at 1000 x 200 and 1000 x 500 the worker used 40-41 % of a core instead of
48-49 % at twice the share; p99 33-44 ms either way), while one slow flush at
light load no longer holds back the next event (docs/benchmarks.md,
"Light-load tail, fifth session"). An event that arrives
when the hub has been quiet for that long is flushed at once by `publish`
itself, in the publisher's greenlet: at 100 x 50 the flusher's wake-up took
0.04 ms (p50) to 0.09 ms (p99) of the relay's ~0.6 ms per event, the writes
to 100 clients 0.46 ms (bench/latency_probe.py).

No latency floor (contract §12, bench/ 100 x 50 and 100 x 500 beside nchan):
the flush interval defaults to 0, so an event goes out at once when the
hub is idle or its flushes stayed within their share, and batches grow only
with load through the flush-share rule above (a 1000-client flush costs
~5 ms, so under load flushes are >= 12 ms apart there on average, as with
the old 10 ms floor).

Rates (`max_hz`): clients with the same patterns AND the same rate form one
group with one Conflator (handlers/conflate.py), so a thousand clients at
2 Hz cost one conflation and one frame per release, not a thousand. The
flusher wakes for a group's next release even when no event arrives.
Releases are written first in a flush, and a release's interval runs from the
end of its writes (`Conflator.sent`), so two releases reach a client at least
an interval apart (bench mixed run: the relay wrote two 487 ms apart when
releases came after the live writes and the interval ran from the flush's start).
A subscription change keeps the rate too: a client whose change would put it
in a group releasing within its interval goes to a group of its own (a stray)
that starts from its last release, until it can share again (`resubscribe`).

Slow clients with `on_slow=conflate` leave their group when they pass their
bound: the client drops its queued event frames (the events they carried, noted
from `delivering` as each was written, seed its newest values), and the hub keeps its newest event per
topic (`Latest`, one per slow client, only while it is slow) and writes it,
then `slow`/`live`, once the client's backlog is below half the bound; the
client then rejoins its group. So what a slow client is shown is never older
than its kernel buffers plus half its bound, instead of its whole backlog.
"""

import logging
import time
from bisect import bisect_right
from typing import Callable, Protocol

import gevent
from gevent.event import Event as Signal

from handlers.conflate import Conflator, Latest, Release
from handlers.events import Event
from handlers.flush import FlushPacer
from handlers.topics import Matcher, compile_patterns

log = logging.getLogger(__name__)

SLOW_CHECK_S = 0.05  # how often a slow client's backlog is looked at while no event arrives
_KEEP = object()


class Subscriber(Protocol):
    """What the hub needs of a client (a /ws, /sse or Polygon connection).

    Optional: `max_hz` (a rate, None = every event); for `on_slow=conflate`,
    `caught_up()` (its backlog under half its bounds and its socket taking bytes), `encode(events, conflated)`,
    `tell_slow(mode)` (writes the `slow` message) and `held_too_many()` (closes it as a slow consumer).
    """

    kind: str                 # wire format: frames are built once per kind per group
    matcher: Matcher
    after_seq: int            # events up to this seq were sent (snapshot, or before it turned slow)

    def encode(self, events: list[Event]) -> bytes: ...
    def deliver(self, frame: bytes, n_events: int) -> None: ...
    def close(self, reason: str, code: int) -> None: ...


def _after(events: list[Event], seq: int) -> int:
    """How many of `events` (ascending seq) come after `seq`."""
    if events[0].seq > seq:
        return len(events)
    return len(events) - bisect_right(events, seq, key=_seq_of)


def _seq_of(event: Event) -> int:
    return event.seq


class Group:
    """Clients with the same patterns and rate; `by_kind` is their snapshot per wire format, rebuilt after a change."""

    __slots__ = ("matcher", "clients", "_by_kind", "conflator", "joiners")

    def __init__(self, matcher: Matcher, max_hz: float | None = None, max_held: int | None = None):
        self.matcher = matcher
        self.clients: set = set()
        self._by_kind: dict[str, tuple] | None = None
        self.conflator = Conflator(max_hz, max_held) if max_hz else None
        # a rated group's clients that joined while its conflator may hold or count events they already had
        # (a snapshot, a slow release, a live frame before a subscribe): client -> [its base seq, the events
        # after that base offered since the last release]; their release's `conflated` counts only those
        self.joiners: dict = {}

    def changed(self) -> None:
        self._by_kind = None

    def events_in(self, batch: list[Event]) -> list[Event]:
        """The events of `batch` this group subscribes to (the batch itself when it takes everything)."""
        match = self.matcher
        return batch if match.everything else [e for e in batch if match(e.topic)]

    def by_kind(self) -> dict[str, tuple]:
        if self._by_kind is None:
            kinds: dict[str, list] = {}
            for client in self.clients:
                kinds.setdefault(client.kind, []).append(client)
            self._by_kind = {kind: tuple(clients) for kind, clients in kinds.items()}
        return self._by_kind


class Hub:
    """Fan-out of published events to subscribers, batched per flush."""

    def __init__(self, flush_interval_ms: float, on_delivered: Callable[[str, int, int], None],
                 on_flush: Callable[[float], None] = lambda seconds: None,
                 on_conflated: Callable[[int], None] = lambda n: None,
                 clock: Callable[[], float] = time.perf_counter, max_held: int | None = None):
        self._clock = clock  # times a rate's release within a flush (tests pass their own)
        # topics a rate's or a slow client's newest values may hold (WS_QUEUE_MAX_EVENTS): past it a rate
        # releases at once and a slow client is closed (a feed with a new topic per event held them all)
        self.max_held = max_held
        self.flush_interval_s = flush_interval_ms / 1000.0
        self._pacer = FlushPacer(self.flush_interval_s)  # handlers/flush.py: when the next flush may start
        self._parked = False  # the flusher waits for an event (not for its pacing delay)
        self._flushing = False
        self._groups: dict[tuple, Group] = {}
        self._rated: set[Group] = set()  # groups with a Conflator
        # rated clients in a group of their own for now: a subscription change put them out of phase with
        # the group they would share (its next release was due within their interval); see resubscribe
        self._strays: set[Subscriber] = set()
        self._slow: dict[Subscriber, Latest] = {}  # on_slow=conflate clients past their bound
        # what the `conflated` counts of a slow client's dropped frames said (a rate's thinning, counted in
        # the metric when it happened): told to the client with its release
        self._untold: dict[Subscriber, int] = {}
        self._pending: list[Event] = []
        self._wake = Signal()
        self._on_delivered = on_delivered  # (kind, frames, events) for metrics
        self._on_flush = on_flush  # seconds one flush took
        self._on_conflated = on_conflated  # events replaced by a newer one of their topic
        self._last_seq = 0  # the newest seq handed to a flush
        # the events of the frame a client's deliver() is called with, and the count its rate thinned
        # out of them: a client holding frames (on_slow=conflate, snapshot not out) keeps their newest
        # values from these, not from the cache, which may no longer reach them (webapp/sockets.py)
        self.delivering: tuple[list[Event], int] = ([], 0)
        self.closing = False
        self.clients_by_kind: dict[str, int] = {}
        # (client, patterns before, patterns after) on every membership change: the upstream's
        # subscriptions follow the clients (webapp/upstream_subs.py); never called per event
        self.on_subscription: Callable[[Subscriber, tuple, tuple], None] | None = None

    # -- membership (never yields: callers rely on this for snapshot atomicity) --

    def add(self, client: Subscriber) -> None:
        self._join(client)
        self.clients_by_kind[client.kind] = self.clients_by_kind.get(client.kind, 0) + 1
        if self.on_subscription is not None:
            self.on_subscription(client, (), client.matcher.patterns)

    def remove(self, client: Subscriber) -> None:
        self._untold.pop(client, None)
        if self._slow.pop(client, None) is not None or self._leave(client):
            self.clients_by_kind[client.kind] -= 1
            if self.on_subscription is not None:
                self.on_subscription(client, client.matcher.patterns, ())

    def _key(self, client: Subscriber) -> tuple:
        """Its group's key: patterns, rate and, for a stray, the client itself."""
        return client.matcher.patterns, getattr(client, "max_hz", None), client if client in self._strays else None

    def _join(self, client: Subscriber, seed: tuple[float, Release | None] | None = None) -> None:
        """Into the group of its key. `seed` (a rate's group that does not exist yet, see resubscribe):
        the client's last release and what its old rate held for it, which the new group starts from."""
        key = self._key(client)
        group = self._groups.get(key)
        seeded = False
        if group is None:
            group = self._groups[key] = Group(client.matcher, key[1], self.max_held)
            if group.conflator is not None:
                if seed is not None:
                    group.conflator.start_after(*seed)
                    seeded = True  # the group's counts are the client's own
                self._rated.add(group)
                self._wake.set()  # the flusher's wait may have to shorten
        group.clients.add(client)
        group.changed()
        if group.conflator is not None and not seeded:
            # events up to the base were delivered, covered or before it subscribed: never counted for it
            group.joiners[client] = [max(client.after_seq, self._last_seq), 0]

    def _leave(self, client: Subscriber) -> bool:
        key = self._key(client)
        self._strays.discard(client)
        group = self._groups.get(key)
        if group is None or client not in group.clients:
            return False
        group.clients.discard(client)
        group.changed()
        group.joiners.pop(client, None)
        if not group.clients:
            del self._groups[key]
            self._rated.discard(group)
        return True

    def resubscribe(self, client: Subscriber, patterns: tuple[str, ...], max_hz=_KEEP) -> None:
        """New patterns (and, when given, a new rate: None = every event) for a client.

        Everything up to the hub's last seq was handed to its old group: delivered, or held by its rate
        for the next release. What its old rate held (the topics it keeps) is not lost by a change, nor
        an event delivered live sent again by the rate it moves to. Moving to every event, it goes out
        now with its count. Moving to a rate (or keeping one), the rate holds across the change: the
        next release waits an interval from the client's last one, and carries what the old rate held (from
        every event, there was no release: the first goes out with the next events, as on a connect).
        The group it would share takes it when that group's next release is no earlier and the old rate
        held nothing; else it is a stray, in a group of its own seeded with both, until it holds nothing
        and the shared group's phase allows it (`_merge_strays`). Released at once, a client that
        changed its subscription every 100 ms at max_hz=1 got 57 releases of one topic in 3 s."""
        before = client.matcher.patterns
        matcher = compile_patterns(patterns)
        old_rate = getattr(client, "max_hz", None)
        rate = old_rate if max_hz is _KEEP else max_hz
        if (matcher.patterns, rate) == (before, old_rate) and client not in self._slow:
            return
        slow = client in self._slow
        group = None if slow else self._groups.get(self._key(client))
        rated = group is not None and group.conflator is not None and client in group.clients
        held = self._held_for(client, group) if rated else None
        # the client had every release of its group since it joined, and none before it within an
        # interval of the group's last (a join keeps that true): the group's last is its last
        last = group.conflator.last_release_s if rated else float("-inf")
        was_in = slow or self._leave(client)
        client.matcher = matcher
        if max_hz is not _KEEP:
            client.max_hz = max_hz
        if not slow:  # a slow client keeps its newest values and rejoins with the new key
            events = [e for e in held.events if matcher(e.topic)] if held is not None else []
            if rate is None:
                if events:
                    self._deliver_alone(client, events, held.conflated)
                client.after_seq = max(client.after_seq, self._last_seq)
                self._join(client)
            else:
                self._join_rate(client, last, Release(events, held.conflated) if events else None)
        if self.on_subscription is not None:
            self.on_subscription(client, before if was_in else (), patterns)

    def _join_rate(self, client: Subscriber, last: float, held: Release | None) -> None:
        """A client changing to (or within) a rate joins its group, or a group of its own that starts from
        its last release `last` and its old rate's `held` (see resubscribe)."""
        shared = self._groups.get((client.matcher.patterns, client.max_hz, None))
        if shared is not None and (held is not None or shared.conflator.last_release_s < last):
            self._strays.add(client)
            shared = None
        if held is None:  # nothing of the old group's to carry: it starts after everything handed on
            client.after_seq = max(client.after_seq, self._last_seq)
        self._join(client, None if shared is not None else (last, held))

    def _merge_strays(self) -> None:
        """A stray whose group holds nothing joins the shared group of its key when that group released
        no earlier than it did (its next release is then an interval after the stray's last), or becomes
        that group when there is none. Out of phase while its topics are busy, it stays a group of one."""
        for client in list(self._strays):
            key = self._key(client)
            group = self._groups[key]
            if group.conflator.due_at() is not None:
                continue
            shared_key = key[:2] + (None,)
            shared = self._groups.get(shared_key)
            if shared is None:
                self._strays.discard(client)
                self._groups[shared_key] = self._groups.pop(key)
            elif shared.conflator.last_release_s >= group.conflator.last_release_s:
                self._leave(client)
                client.after_seq = max(client.after_seq, self._last_seq)
                self._join(client)

    def _held_for(self, client: Subscriber, group: Group) -> Release | None:
        """What `client`'s rate (its `group`'s) holds for its next release (after its snapshot), and its count."""
        held = group.conflator.held()
        if not held.events:
            return None
        events = [e for e in held.events if e.seq > client.after_seq]
        joined = group.joiners.get(client)
        conflated = held.conflated if joined is None else joined[1] - _after(held.events, joined[0])
        return Release(events, conflated)

    @property
    def last_seq(self) -> int:
        """The newest seq handed to a flush: a client's frame of that flush covers its events up to it."""
        return self._last_seq

    def conflating(self, client: Subscriber) -> bool:
        """Is `client` on newest values for being slow (on_slow=conflate)?"""
        return client in self._slow

    def conflate_slow(self, client: Subscriber, unsent: list[Event] = (), untold: int = 0) -> None:
        """`client` passed its bound and asked for conflation: newest value per topic until it catches up.

        Called from its `deliver`, within a flush. `unsent`: the events (each topic's in ascending seq) it
        was due and will not get as they were (those its dropped frames carried, and this batch's); their
        newest per topic go out with the first release. `untold`: what those frames' `conflated` counts
        said, added to the release's.
        """
        if client in self._slow or not self._leave(client):
            return
        if untold:
            self._untold[client] = untold
        client.after_seq = max(client.after_seq, self._last_seq)
        latest = Latest()
        latest.offer(e for e in unsent if e.seq <= self._last_seq)  # later ones come with the next batch
        self._slow[client] = latest
        client.tell_slow("conflated")

    @property
    def client_count(self) -> int:
        return sum(len(g.clients) for g in self._groups.values()) + len(self._slow)

    def clients(self) -> list[Subscriber]:
        return [c for g in self._groups.values() for c in g.clients] + list(self._slow)

    def mode_counts(self) -> dict[str, int]:
        """Clients by delivery mode: every event, at a rate (`max_hz`), conflated for being slow."""
        rated = sum(len(g.clients) for g in self._rated)
        return {"live": self.client_count - rated - len(self._slow), "rate": rated, "conflated": len(self._slow)}

    def mode_of(self, client: Subscriber) -> str:
        if client in self._slow:
            return "conflated"
        return "rate" if getattr(client, "max_hz", None) else "live"

    # -- publishing -----------------------------------------------------------

    def publish(self, events: list[Event]) -> None:
        """Hand events on; never blocks. Queued for the flusher, or, when the hub is idle and its
        pacing allows a flush now, flushed at once in the caller's greenlet: no wake-up and no
        greenlet switch between an event's arrival and its writes (bench/latency_probe.py)."""
        if not events:
            return
        if self._parked and not self._pending and not self._flushing \
                and self._pacer.delay_s(time.perf_counter()) == 0.0:
            self._flush_timed(events)
            if self._rated or self._slow:
                self._wake.set()  # a release or a slow client's check may now be due sooner
            return
        self._pending.extend(events)
        self._wake.set()

    def _next_timer(self, now_s: float) -> float | None:
        """Seconds until the flusher must run without a new event (a rate's release, a slow client's check)."""
        due = None
        for group in self._rated:
            at = group.conflator.due_at()
            if at is not None and (due is None or at < due):
                due = at
        if self._slow:
            due = min(due, now_s + SLOW_CHECK_S) if due is not None else now_s + SLOW_CHECK_S
        return None if due is None else max(0.0, due - now_s)

    def run(self) -> None:
        """The flusher loop: one greenlet per worker."""
        while True:
            self._parked = True
            try:
                self._wake.wait(self._next_timer(time.perf_counter()))
            finally:
                self._parked = False
            delay = self._pacer.delay_s(time.perf_counter())
            if delay > 0:
                gevent.sleep(delay)
            self._wake.clear()
            batch, self._pending = self._pending, []
            self._flush_timed(batch)

    def _flush_timed(self, batch: list[Event]) -> None:
        """One flush, its cost noted for the pacing (and, with events, for the metrics)."""
        self._flushing = True
        start = time.perf_counter()
        cpu_start = time.thread_time()
        try:
            self.flush(batch, start)
        finally:
            self._flushing = False
            # the pacing counts the worker's CPU time (time descheduled is no flushing); the metric, wall time
            self._pacer.flushed(start, time.thread_time() - cpu_start)
            wall = time.perf_counter() - start
        if batch:
            self._on_flush(wall)

    def flush(self, batch: list[Event], now_s: float | None = None) -> None:
        """Hand `batch` to every group (and what a rate or slow client holds, when it is due)."""
        if now_s is None:
            now_s = time.perf_counter()
        # now_s on the clock that times the releases' writes: read even with no rated group, for one may
        # form within this flush (a slow max_hz client caught up rejoins its group in _feed_slow); taken as
        # 0 then, that group's next release was set clock-reading seconds ahead and it went silent for good
        clock0 = self._clock()
        if batch:
            self._last_seq = batch[-1].seq
        if self._slow:
            self._feed_slow(batch)
        if self._rated:
            self._release(batch, now_s, clock0)
        if not batch:
            return
        for group in list(self._groups.values()):
            if group.conflator is not None:
                continue  # released above
            events = group.events_in(batch)
            if events:
                self._send(group, events, 0)

    def _release(self, batch: list[Event], now_s: float, clock0: float) -> None:
        """Rated groups first in a flush: offer them the batch and write the releases that are due.

        First, so that a release is written at the flush's start, not after every live
        client's write (~8 ms for 900 here), and the next one waits an interval from the
        end of these writes only (`Conflator.sent`): each client's releases are an
        interval apart at its socket, and a topic's last value waits an interval plus
        the release's own writes (bench mixed run at 50 events/s: 500 ms + 43-56 ms with
        the releases after the live writes, against 500 ms + the live p99 as the target)."""
        for group in list(self._rated):
            events = group.events_in(batch)
            conflator = group.conflator
            if events:
                for joined in group.joiners.values():
                    joined[1] += _after(events, joined[0])
                conflator.offer(events)
            release = conflator.take(now_s)
            if release is not None:
                if release.conflated:
                    self._on_conflated(release.conflated)
                own = self._own_counts(group, release) if group.joiners else None
                if own:
                    self._send_own(group, release.events, own)
                self._send(group, release.events, release.conflated, own)
                conflator.sent(now_s + (self._clock() - clock0))  # the writes' end, on now_s's clock
        if self._strays:
            self._merge_strays()

    def _own_counts(self, group: Group, release: Release) -> dict:
        """The clients of `group` whose release `conflated` is not the group's, and theirs.

        A joiner's count is the events after its base that were replaced: those offered since the last
        release less those this release delivers. Once the group's events all come after its base (the
        hub has handed on everything up to it), the group's count is its count too and it stops being a
        joiner. Late clients (a release reaching back into their snapshot) always get their own frame."""
        own = {}
        events, first_seq = release.events, release.events[0].seq
        for client, (base, offered) in list(group.joiners.items()):
            n = offered - _after(events, base)
            if n != release.conflated or client.after_seq >= first_seq:
                own[client] = n
            if base <= self._last_seq:
                del group.joiners[client]
            else:
                group.joiners[client] = [base, 0]
        return own

    def _send_own(self, group: Group, events: list[Event], own: dict) -> None:
        """A release to clients with their own `conflated` count: only the events after their snapshot."""
        for client, conflated in own.items():
            mine = [e for e in events if e.seq > client.after_seq]
            if mine:
                self._deliver_alone(client, mine, conflated)

    def _deliver_alone(self, client: Subscriber, events: list[Event], conflated: int) -> None:
        """A frame of `client`'s own, not its group's shared one, with `delivering` saying what it carries."""
        carried, self.delivering = self.delivering, (events, conflated)
        client.deliver(client.encode(events, conflated) if conflated else client.encode(events), len(events))
        self._on_delivered(client.kind, 1, len(events))
        self.delivering = carried

    def _send(self, group: Group, events: list[Event], conflated: int, own: dict | None = None) -> None:
        """`events` to every client of `group` (but those in `own`, which `_send_own` served)."""
        n_events = len(events)
        first_seq = events[0].seq
        self.delivering = carried = (events, conflated)
        # The loop below runs once per client per flush: it is the relay's hot path.
        # A snapshot tuple, so a client that leaves during the flush disturbs nobody.
        for kind, clients in group.by_kind().items():
            if own:
                clients = [c for c in clients if c not in own]
            frame = None
            n_clients = 0
            for client in clients:
                if client.after_seq >= first_seq:  # joined mid-batch: skip what its snapshot had
                    late = [e for e in events if e.seq > client.after_seq]
                    if late:
                        self.delivering = (late, conflated)
                        client.deliver(client.encode(late, conflated) if conflated else client.encode(late),
                                       len(late))
                        self.delivering = carried
                    continue
                if frame is None:
                    frame = client.encode(events, conflated) if conflated else client.encode(events)
                client.deliver(frame, n_events)
                n_clients += 1
            if n_clients:
                self._on_delivered(kind, n_clients, n_clients * n_events)

    def _feed_slow(self, batch: list[Event]) -> None:
        """Slow clients keep their newest value per topic; one that caught up gets them, then goes live."""
        for client, latest in list(self._slow.items()):
            if batch:
                match, after = client.matcher, client.after_seq
                latest.offer(e for e in batch if e.seq > after and match(e.topic))
                if self.max_held is not None and len(latest) > self.max_held:
                    client.held_too_many()  # closed: its newest values alone are past its bound
                    continue
            if not client.caught_up():
                continue
            del self._slow[client]
            release: Release = latest.take()
            if release.conflated:
                self._on_conflated(release.conflated)
            client.after_seq = max(client.after_seq, self._last_seq)
            self._join(client)  # first: should the release itself pass its bound, it conflates again
            told = release.conflated + self._untold.pop(client, 0)
            if release.events:
                self._deliver_alone(client, release.events, told)
            if client not in self._slow:
                client.tell_slow("live")

    def restart_seq(self) -> None:
        """A new epoch: seqs start over, so no client's snapshot covers any of them."""
        for client in self.clients():
            client.after_seq = 0

    def close_all(self, reason: str, code: int) -> None:
        """Tell every client why and close it (shutdown)."""
        self.closing = True
        for client in self.clients():
            client.close(reason, code)
