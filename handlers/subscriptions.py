"""Upstream subscriptions that follow the clients: reference counts, the union, what to send and when.

Contract §11. Three plain-data parts, the clock passed in as `now_ms`:

- `ClientTable`: one worker's clients and their upstream-form patterns
  (`EV.SYM`, `EV.*`). `change(owner, before, after)` returns the patterns
  that got their first owner and those that lost their last one — centrifuge
  `hub.go`'s `first` / `empty` — and the shell tells others only then.
- `UpstreamPlan`: the leader's side. `want(patterns, now_ms)` sets what some
  client (any worker) or UPSTREAM_TOPICS wants; `due(now_ms)` says what to
  send now: new patterns after the 50 ms batching window, patterns nobody
  wants any more once UPSTREAM_UNSUBSCRIBE_DELAY_MS has passed, a symbol never
  on its own while its `EV.*` is subscribed. `connected(now_ms)` is the whole
  union after a (re)connect. `refused(...)` takes an upstream error status.
- The feed's side (the demo feed, `replay`, the tests' fake upstream):
  `feed_action` applies a Polygon `subscribe`/`unsubscribe` to a peer's set
  and `feed_select` keeps the elements a peer is subscribed to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping

BATCH_MS = 50
"""Changes made within this long go out in one message (contract §11)."""

ATTRIBUTE_MS = 5000
"""An error status naming no pattern is laid at the last subscribe's door if it came this soon after it
and that subscribe named one pattern."""

MAX_PARAMS_CHARS = 60_000
"""One subscribe/unsubscribe message carries at most this many characters of patterns (more: several)."""

_UPSTREAM_FORM = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}\.(\*|[^*,\s\x00-\x1f\x7f]+)")  # no control characters


def is_upstream_form(pattern: str) -> bool:
    """`EV.SYM` or `EV.*` (`T.AAPL`, `Q.*`, `XT.X:BTC-USD`, `T.BRK.A`): what a Polygon upstream can subscribe to.

    `*`, `T.AA*` and anything with a comma or a space are not: they take
    whatever the upstream sends and never change its subscriptions.
    """
    return len(pattern) <= 256 and _UPSTREAM_FORM.fullmatch(pattern) is not None


def wildcard_of(pattern: str) -> str:
    """`T.AAPL` -> `T.*` (the pattern that covers it)."""
    return pattern.split(".", 1)[0] + ".*"


def is_wildcard(pattern: str) -> bool:
    return pattern.endswith(".*")


# -- one worker's clients ------------------------------------------------------------------


class ClientTable:
    """Which owners (clients) hold which upstream-form patterns: a refcount table with its owners."""

    def __init__(self) -> None:
        self._owners: dict[str, set[Hashable]] = {}

    def change(self, owner: Hashable, before: Iterable[str], after: Iterable[str]
               ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """`owner`'s patterns went from `before` to `after`: (first, empty) — patterns that got their
        first owner, patterns that lost their last one. Other patterns are ignored."""
        old = {p for p in before if is_upstream_form(p)}
        new = {p for p in after if is_upstream_form(p)}
        first, empty = [], []
        for pattern in sorted(new - old):
            owners = self._owners.setdefault(pattern, set())
            if not owners:
                first.append(pattern)
            owners.add(owner)
        for pattern in sorted(old - new):
            owners = self._owners.get(pattern)
            if owners is None or owner not in owners:
                continue
            owners.discard(owner)
            if not owners:
                del self._owners[pattern]
                empty.append(pattern)
        return tuple(first), tuple(empty)

    def counts(self) -> dict[str, int]:
        """pattern -> how many owners hold it."""
        return {pattern: len(owners) for pattern, owners in self._owners.items()}

    def owners(self, pattern: str) -> tuple[Hashable, ...]:
        return tuple(self._owners.get(pattern, ()))

    def __len__(self) -> int:
        return len(self._owners)


def merge_counts(tables: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Several workers' counts as one (the cluster's union, with client counts)."""
    total: dict[str, int] = {}
    for table in tables:
        for pattern, n in table.items():
            if n > 0 and is_upstream_form(pattern):
                total[pattern] = total.get(pattern, 0) + n
    return total


def capped_counts(counts: Mapping[str, int], limit: int) -> tuple[dict[str, int], tuple[str, ...]]:
    """At most `limit` patterns, those with the most clients first (then by name): (kept, cut).

    A worker reports no more than the upstream could ever take, so a flood of
    clients with distinct patterns cannot grow what it writes to Redis past it."""
    if len(counts) <= limit:
        return dict(counts), ()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return dict(ranked[:limit]), tuple(sorted(p for p, _ in ranked[limit:]))


# -- the leader: what the upstream is subscribed to -------------------------------------------


@dataclass(frozen=True)
class Step:
    """What to do now: messages to send (in order), and patterns over the limit, for their clients."""

    messages: tuple[dict[str, str], ...] = ()
    over_limit: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.messages or self.over_limit)


def action_messages(action: str, patterns: Iterable[str], max_chars: int = MAX_PARAMS_CHARS
                    ) -> list[dict[str, str]]:
    """`{"action": action, "params": "T.AAPL,Q.MSFT"}`, split so that no params exceed `max_chars`."""
    messages, part, size = [], [], 0
    for pattern in patterns:
        if part and size + 1 + len(pattern) > max_chars:
            messages.append({"action": action, "params": ",".join(part)})
            part, size = [], 0
        size += len(pattern) + (1 if part else 0)
        part.append(pattern)
    if part:
        messages.append({"action": action, "params": ",".join(part)})
    return messages


@dataclass
class UpstreamPlan:
    """The upstream's subscriptions: what is wanted, what was sent, what is leaving and when."""

    fixed: tuple[str, ...] = ()          # UPSTREAM_TOPICS: always subscribed
    delay_ms: int = 5000                 # UPSTREAM_UNSUBSCRIBE_DELAY_MS
    max_patterns: int = 10_000           # the most patterns subscribed upstream at once
    batch_ms: int = BATCH_MS
    wanted: dict[str, int] = field(default_factory=dict)      # pattern -> clients (fixed ones count 0)
    sent: dict[str, None] = field(default_factory=dict)       # subscribed upstream now, in the order sent
    leaving: dict[str, int] = field(default_factory=dict)     # pattern -> when its unsubscribe is due
    failed: dict[str, str] = field(default_factory=dict)      # refused by the upstream: not asked again
    over: set[str] = field(default_factory=set)               # wanted, but past max_patterns
    changed_at: int | None = None                             # first change not sent yet
    last_subscribe: tuple[tuple[str, ...], int] = ((), 0)     # patterns of the last subscribe, when

    def want(self, counts: Mapping[str, int], now_ms: int) -> None:
        """What the clients want now (pattern -> client count); UPSTREAM_TOPICS are added."""
        wanted = {p: n for p, n in counts.items() if n > 0 and is_upstream_form(p)}
        for pattern in self.fixed:
            wanted.setdefault(pattern, 0)
        for pattern in self.wanted.keys() - wanted.keys():
            self.failed.pop(pattern, None)  # wanted again later: asked again
            self.over.discard(pattern)
            if pattern in self.sent:
                self.leaving.setdefault(pattern, now_ms + self.delay_ms)
        for pattern in wanted:
            self.leaving.pop(pattern, None)  # back within the delay: no message at all
        if wanted.keys() - self.wanted.keys() and self.changed_at is None:  # leaving ones have their deadline
            self.changed_at = now_ms
        self.wanted = wanted

    def _target(self, keep: Iterable[str]) -> list[str]:
        """Patterns to subscribe so that everything in `keep` is covered (not yet failed)."""
        keep = set(keep)
        out = []
        for pattern in sorted(self.wanted, key=lambda p: (not is_wildcard(p), p)):
            if pattern in self.sent or pattern in self.failed:
                continue
            if not is_wildcard(pattern) and wildcard_of(pattern) in keep and wildcard_of(pattern) not in self.failed:
                continue  # its EV.* carries it
            out.append(pattern)
        return out

    def due(self, now_ms: int) -> Step:
        """What to send now (call when connected; wake again at `wake_at`)."""
        expired = [p for p, at in self.leaving.items() if at <= now_ms]
        batch_ready = self.changed_at is not None and now_ms >= self.changed_at + self.batch_ms
        if not batch_ready and not (expired and now_ms >= min(self.leaving[p] for p in expired) + self.batch_ms):
            return Step()
        for pattern in expired:
            del self.leaving[pattern]
        keep = set(self.wanted) | set(self.leaving)
        subscribe = self._target(keep)
        room = self.max_patterns - len(self.sent)
        # what is gone makes room first, after the new ones are in (no moment without data)
        unsubscribe = [p for p in self.sent if p not in keep]
        room += len(unsubscribe)
        over = tuple(p for p in subscribe[max(0, room):] if p not in self.over)
        self.over.update(subscribe[max(0, room):])
        subscribe = subscribe[:max(0, room)]
        for pattern in subscribe:
            self.sent[pattern] = None
        for pattern in unsubscribe:
            del self.sent[pattern]
        self.changed_at = None
        if subscribe:
            self.last_subscribe = (tuple(subscribe), now_ms)
        return Step(tuple(action_messages("subscribe", subscribe) + action_messages("unsubscribe", unsubscribe)),
                    over)

    def wake_at(self) -> int | None:
        """When `due` has something to do next (None: only after the next change)."""
        times = [at + self.batch_ms for at in self.leaving.values()]
        if self.changed_at is not None:
            times.append(self.changed_at + self.batch_ms)
        return min(times) if times else None

    def connected(self, now_ms: int) -> Step:
        """A fresh connection has nothing subscribed: the whole union, at once (after UPSTREAM_INIT)."""
        self.sent.clear()
        self.leaving.clear()  # nobody wants them: not asked for again
        self.failed.clear()
        self.over.clear()
        self.changed_at = now_ms - self.batch_ms
        return self.due(now_ms)

    def disconnected(self) -> None:
        """Nothing is subscribed on a connection that is gone; `connected` sends the union again."""
        self.sent.clear()
        self.leaving.clear()

    def refused(self, patterns: Iterable[str], message: str) -> None:
        """The upstream refused these: they are not subscribed, and not asked for again while wanted."""
        for pattern in patterns:
            if pattern in self.wanted:
                self.failed[pattern] = message
            if self.sent.pop(pattern, "absent") is None and is_wildcard(pattern) and self.changed_at is None:
                self.changed_at = 0  # the symbols it was to carry go on their own, at the next `due`

    def subscribed(self) -> list[str]:
        return sorted(self.sent)


_TOKEN_EDGES = "\"'`()[]{}<>,;!?"


def patterns_named(message: str, candidates: Iterable[str]) -> list[str]:
    """Which of `candidates` a status message names ("not authorized for T.AAPL." -> T.AAPL)."""
    wanted = set(candidates)
    found: dict[str, None] = {}
    for word in re.split(r"[\s,]+", message):
        word = word.strip(_TOKEN_EDGES)
        for candidate in (word, word.rstrip(".:")):
            if candidate in wanted:
                found[candidate] = None
    return list(found)


def blamed_patterns(message: str, subscribed: Iterable[str], last_subscribe: tuple[tuple[str, ...], int],
                    now_ms: int) -> list[str]:
    """The patterns an upstream error status is about: those it names, else the last subscribe's pattern
    when it came within ATTRIBUTE_MS of it and named one pattern alone, else none. Laid at the door of a
    subscribe of several (the whole union after a reconnect), one error naming nothing marked them all
    refused: every client told so, /health showing none subscribed, and no unsubscribe ever sent for the
    patterns the vendor had taken (an outside audit)."""
    patterns, sent_at = last_subscribe
    named = patterns_named(message, {*subscribed, *patterns})
    if named:
        return named
    if len(patterns) == 1 and now_ms - sent_at <= ATTRIBUTE_MS:
        return list(patterns)
    return []


# -- the feed's side: a Polygon upstream that honours subscribe/unsubscribe --------------------


def topic_matches(topic: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == topic or (pattern.endswith("*") and topic.startswith(pattern[:-1])):
            return True
    return False


def feed_action(message: Any, patterns: frozenset[str]) -> tuple[frozenset[str], list[dict[str, str]]] | None:
    """A peer's `subscribe`/`unsubscribe` applied to its set: (new set, the status replies).
    None for anything else (auth, junk): the caller decides."""
    if not isinstance(message, dict) or message.get("action") not in ("subscribe", "unsubscribe"):
        return None
    params = message.get("params")
    if not isinstance(params, str):
        return patterns, [{"ev": "status", "status": "error", "message": "params must be a string"}]
    topics = [t.strip() for t in params.split(",") if t.strip()][:10_000]
    if message["action"] == "subscribe":
        after = patterns | set(topics)
        replies = [{"ev": "status", "status": "success", "message": f"subscribed to: {t}"} for t in topics]
    else:
        after = patterns - set(topics)
        replies = [{"ev": "status", "status": "success", "message": f"unsubscribed to: {t}"} for t in topics]
    return frozenset(after), replies


def feed_select(elements: Iterable[Any], patterns: frozenset[str]) -> list[Any]:
    """The elements a peer subscribed to `patterns` gets: market data (`ev` + `sym`) of its topics;
    everything else (statuses, other shapes) goes to every peer."""
    out = []
    for el in elements:
        if isinstance(el, dict) and "ev" in el and "sym" in el and el.get("ev") != "status":
            if not topic_matches(f"{el['ev']}.{el['sym']}", patterns):
                continue
        out.append(el)
    return out
