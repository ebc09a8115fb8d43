"""The recent-event cache: bounded by count and age, O(1) add and eviction, clock passed in."""

import threading
from collections import deque
from typing import Any, Callable, Iterator

from handlers import jsonx
from handlers.events import Event
from handlers.topics import MATCH_ALL

Match = Callable[[str], bool]


class EventCache:
    """Events in ascending seq; the oldest leaves first when full or expired.

    Methods never yield to other greenlets, so a read sees a consistent state;
    the lock also makes it safe for real threads (store reads run in a pool).
    """

    def __init__(self, max_items: int, ttl_s: int, max_bytes: int | None = None):
        self._events: deque[Event] = deque()
        self._by_seq: dict[int, Event] = {}
        self._lock = threading.Lock()
        self.max_items = max_items
        # the events' JSON bytes it may hold (None: no bound); the newest event always stays. Bounded by
        # count alone, 2,000 events of 1 MB took a worker to 2.65 GB (an outside audit); the default
        # 10,000 of up to 4 MiB each would be 40 GB
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._bytes = 0
        self.added = self.evicted = self.expired = self.hits = self.misses = 0

    # -- writes -------------------------------------------------------------

    def add(self, events: list[Event], now_ms: int) -> None:
        """Append events (ascending seq, newer than anything held)."""
        with self._lock:
            for ev in events:
                if self._events and ev.seq <= self._events[-1].seq:
                    continue  # already held (warm-up overlap, a replayed bus message)
                self._events.append(ev)
                self._by_seq[ev.seq] = ev
                self._bytes += len(ev.json)
                self.added += 1
            self._expire(now_ms)
            self._evict()

    def _evict(self) -> None:
        """The oldest leave while there are more than max_items or (but the newest) more than max_bytes."""
        while len(self._events) > self.max_items or (
                self.max_bytes is not None and self._bytes > self.max_bytes and len(self._events) > 1):
            self._pop_oldest()
            self.evicted += 1

    def configure(self, now_ms: int, ttl_s: int | None = None, max_items: int | None = None) -> None:
        """Change the bounds at runtime; they apply at once."""
        with self._lock:
            if ttl_s is not None:
                self.ttl_s = ttl_s
            if max_items is not None:
                self.max_items = max_items
            self._expire(now_ms)
            self._evict()

    def clear(self) -> int:
        """Drop everything; return how many events were held."""
        with self._lock:
            n = len(self._events)
            self._events.clear()
            self._by_seq.clear()
            self._bytes = 0
            return n

    def _pop_oldest(self) -> None:
        ev = self._events.popleft()
        del self._by_seq[ev.seq]
        self._bytes -= len(ev.json)

    def _cutoff(self, now_ms: int) -> int:
        return now_ms - self.ttl_s * 1000

    def _expire(self, now_ms: int) -> None:
        cutoff = self._cutoff(now_ms)
        while self._events and self._events[0].ts < cutoff:
            self._pop_oldest()
            self.expired += 1

    # -- reads ----------------------------------------------------------------

    def _newest_first(self, now_ms: int) -> Iterator[Event]:
        cutoff = self._cutoff(now_ms)
        for ev in reversed(self._events):
            if ev.ts < cutoff:
                return
            yield ev

    def get(self, seq: int, now_ms: int) -> Event | None:
        """One unexpired event by seq."""
        with self._lock:
            ev = self._by_seq.get(seq)
            if ev is not None and ev.ts >= self._cutoff(now_ms):
                self.hits += 1
                return ev
            self.misses += 1
            return None

    def recent(self, limit: int, now_ms: int, match: Match = MATCH_ALL) -> list[Event]:
        """The most recent `limit` unexpired events matching, ascending seq."""
        return self.search(now_ms, limit, match)

    def search(self, now_ms: int, limit: int, match: Match = MATCH_ALL,
               q: str | None = None, field: str | None = None, value: str | None = None) -> list[Event]:
        """The most recent `limit` matches, ascending seq.

        `q`: case-insensitive substring of the event's JSON; `field`+`value`:
        exact match on a dotted path inside data (see `field_text`).
        """
        needle = q.lower() if q else None
        # bytes.lower() folds ASCII only: a non-ASCII needle is compared as text
        ascii_needle = needle.encode() if needle is not None and needle.isascii() else None
        path = field.split(".") if field else None
        out: list[Event] = []
        with self._lock:
            for ev in self._newest_first(now_ms):
                if len(out) >= limit:
                    break
                if not match(ev.topic):
                    continue
                if ascii_needle is not None:
                    if ascii_needle not in ev.json.lower():
                        continue
                elif needle is not None and needle not in ev.json.decode("utf-8", "replace").lower():
                    continue
                if path is not None:
                    text = field_text(ev.data, path)
                    if text is None or text != value:  # an absent field never matches
                        continue
                out.append(ev)
        out.reverse()
        return out

    def latest(self, now_ms: int, match: Match = MATCH_ALL, limit: int | None = None) -> list[Event]:
        """The newest unexpired event of each matching topic, ascending seq (§12 `snapshot=latest`).

        With `limit`, the `limit` topics that changed most recently. One pass over the cache.
        """
        newest: dict[str, Event] = {}
        skipped: set[str] = set()
        with self._lock:
            for ev in self._newest_first(now_ms):
                if limit is not None and len(newest) >= limit:
                    break
                topic = ev.topic
                if topic in newest or topic in skipped:
                    continue
                if match(topic):
                    newest[topic] = ev
                else:
                    skipped.add(topic)
        return sorted(newest.values(), key=lambda ev: ev.seq)

    def events_after(self, seq: int, now_ms: int, match: Match = MATCH_ALL) -> list[Event]:
        """Every unexpired event with a seq above `seq` that matches, ascending."""
        out: list[Event] = []
        with self._lock:
            for ev in self._newest_first(now_ms):
                if ev.seq <= seq:
                    break
                if match(ev.topic):
                    out.append(ev)
        out.reverse()
        return out

    def oldest_seq(self, now_ms: int) -> int | None:
        """The lowest unexpired seq held, or None when empty."""
        with self._lock:
            cutoff = self._cutoff(now_ms)
            for ev in self._events:
                if ev.ts >= cutoff:
                    return ev.seq
            return None

    def newest_seq(self) -> int | None:
        with self._lock:
            return self._events[-1].seq if self._events else None

    def __len__(self) -> int:
        return len(self._events)

    def stats(self, now_ms: int) -> dict[str, Any]:
        """The figures of contract §6 `/cache/stats`."""
        with self._lock:
            cutoff = self._cutoff(now_ms)
            expired_now = 0
            for ev in self._events:
                if ev.ts >= cutoff:
                    break
                expired_now += 1
            valid = len(self._events) - expired_now
            return {
                "items": len(self._events),
                "valid_items": valid,
                "max_items": self.max_items,
                "ttl_seconds": self.ttl_s,
                "bytes": self._bytes,
                "added": self.added,
                "evicted": self.evicted,
                "expired": self.expired,
                "hits": self.hits,
                "misses": self.misses,
                "oldest_seq": self._events[expired_now].seq if valid else None,
                "newest_seq": self._events[-1].seq if valid else None,
            }


_MISSING = object()


def field_text(data: Any, path: list[str]) -> str | None:
    """The value at a dotted path, as JSON text without quotes for strings; None if absent.

    `AAPL`, `100`, `1.5`, `true`, `null`; objects and arrays as compact JSON.
    """
    node: Any = data
    for part in path:
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if node is _MISSING:
            return None
    if isinstance(node, str):
        return node
    return jsonx.dumps(node).decode()
