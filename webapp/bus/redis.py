"""The Redis transport: a leader lease, a fenced publisher into a bounded Stream, and a reader per worker.

Only the lease holder may append to the stream: the append is a Lua script
that checks the lease first, so a leader that was paused past its lease (and
replaced) cannot publish afterwards. Every worker — the leader too — reads
the stream with blocking XREADs and resumes from its last entry id after a
Redis blip.
"""

import logging
import time
from collections import deque
from typing import Callable

import gevent
import redis
from gevent.event import Event as Signal

from handlers import jsonx
from handlers.events import Event, event_from_json
from webapp.bus import Bus

log = logging.getLogger(__name__)

APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'seq', ARGV[i], 'epoch', ARGV[3], 'e', ARGV[i + 1])
end
return 1
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Redis failures by kind; each is retried with a pause and shown in /health, never fatal to a loop:
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.InvalidResponse, OSError)  # no (sane) answer
REFUSED = (redis.ResponseError,)  # an answer that says no: READONLY after a failover, OOM at maxmemory, ...
FAILURES = UNREACHABLE + REFUSED
# anything else (DataError: arguments this code built wrongly) is a bug: the task crashes and is restarted


def failure_text(exc: Exception) -> str:
    """What /health says: 'refused' for an answer that said no, 'unavailable' for no answer."""
    kind = "refused" if isinstance(exc, REFUSED) else "unavailable"
    return f"{kind}: {type(exc).__name__}: {exc}"


class LostLease(Exception):
    """The lease is someone else's: this worker must stop acting as leader."""


class Lease:
    """The leader lease: a key set NX with a time-out, renewed while alive."""

    def __init__(self, client: redis.Redis, key: str, holder: str, lease_ms: int):
        self.client = client
        self.key = key
        self.holder = holder
        self.lease_ms = lease_ms
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self.held_until = 0.0  # monotonic time until which we know the lease is ours

    def acquire(self) -> bool:
        started = time.monotonic()
        if self.client.set(self.key, self.holder, nx=True, px=self.lease_ms):
            self.held_until = started + self.lease_ms / 1000.0
            return True
        return False

    def renew(self) -> bool:
        started = time.monotonic()
        if self._renew(keys=[self.key], args=[self.holder, self.lease_ms]):
            self.held_until = started + self.lease_ms / 1000.0
            return True
        self.held_until = 0.0
        return False

    def release(self) -> None:
        self.held_until = 0.0
        self._release(keys=[self.key], args=[self.holder])

    def current_holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if value else None

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.held_until


class RedisBus(Bus):
    backend = "redis"

    def __init__(self, url: str, prefix: str, holder: str, deliver: Callable[[list[Event]], None], *,
                 lease_ms: int, stream_maxlen: int, read_block_ms: int = 1000, batch_max: int = 1000):
        super().__init__(deliver)
        self.prefix = prefix
        self.stream_key = f"{prefix}:events"
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        # the blocking reader gets its own connection, with a read time-out beyond its block
        self.reader = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=read_block_ms / 1000 + 5)
        self.lease = Lease(self.client, f"{prefix}:leader", holder, lease_ms)
        self._append = self.client.register_script(APPEND)
        self.stream_maxlen = stream_maxlen
        self.read_block_ms = read_block_ms
        self.batch_max = batch_max
        self._outbox: deque[tuple[Event, str]] = deque()
        self._wake = Signal()
        self.last_id = b"0-0"
        self.published = 0
        self.on_fenced: Callable[[], None] = lambda: None
        self.last_error: str | None = None

    # -- publishing (the leader) ------------------------------------------------------

    def publish(self, events: list[Event], epoch: str) -> None:
        """Queue for the publisher greenlet; never blocks (ingest must not yield)."""
        self._outbox.extend((e, epoch) for e in events)
        self._wake.set()

    def discard_outbox(self) -> int:
        n = len(self._outbox)
        self._outbox.clear()
        return n

    def run_publisher(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._outbox:
                epoch = self._outbox[0][1]
                batch: list[Event] = []
                for event, event_epoch in self._outbox:
                    if event_epoch != epoch or len(batch) >= self.batch_max:
                        break
                    batch.append(event)
                args: list = [self.lease.holder, self.stream_maxlen, epoch]
                for event in batch:
                    args += [event.seq, event.json]
                try:
                    appended = self._append(keys=[self.lease.key, self.stream_key], args=args)
                except FAILURES as exc:
                    self._failed(exc)
                    gevent.sleep(0.2)
                    continue
                if not appended:
                    log.error("lost the leader lease: %d queued events not published", len(self._outbox))
                    self._outbox.clear()
                    self.on_fenced()
                    break
                for _ in batch:
                    self._outbox.popleft()
                self.published += len(batch)

    # -- reading (every worker) --------------------------------------------------------

    def run_reader(self) -> None:
        while True:
            try:
                answer = self.reader.xread({self.stream_key: self.last_id}, count=self.batch_max,
                                           block=self.read_block_ms)
            except FAILURES as exc:
                self._failed(exc)
                gevent.sleep(0.5)
                continue
            if not self.ok:
                log.info("bus: Redis answers again; reading from %s", self.last_id.decode())
            self.ok = True
            self.last_error = None
            for _stream, entries in answer or ():
                self._take(entries)

    def _take(self, entries) -> None:
        events: list[Event] = []
        epoch = None
        for entry_id, fields in entries:
            self.last_id = entry_id
            entry_epoch = fields[b"epoch"].decode()
            if epoch is not None and entry_epoch != epoch:
                self.received(events, epoch)
                events = []
            epoch = entry_epoch
            try:
                events.append(event_from_json(fields[b"e"]))
            except (jsonx.NotJSON, KeyError, ValueError) as exc:
                log.error("bus: unreadable stream entry %s: %s", entry_id, exc)
        if events:
            self.received(events, epoch)

    def _failed(self, exc: Exception) -> None:
        text = failure_text(exc)
        if self.ok or text.split(":", 1)[0] != (self.last_error or "").split(":", 1)[0]:
            log.error("bus: Redis %s", text)  # once per outage and kind, not per retry
        self.ok = False
        self.last_error = text

    # -- state for a new leader or a starting worker ---------------------------------

    def tail(self, count: int) -> tuple[list[Event], str | None, bytes]:
        """The newest `count` events of the stream's current epoch, ascending, that epoch, and the last entry id."""
        entries = self.client.xrevrange(self.stream_key, count=count)
        if not entries:
            return [], None, b"0-0"
        epoch = entries[0][1][b"epoch"].decode()
        events = []
        for _entry_id, fields in entries:
            if fields[b"epoch"].decode() != epoch:
                break  # older entries belong to another seq space
            events.append(event_from_json(fields[b"e"]))
        events.reverse()
        return events, epoch, entries[0][0]

    def newest(self) -> tuple[int, str] | None:
        """The seq and epoch of the stream's newest entry (None when it is empty)."""
        entries = self.client.xrevrange(self.stream_key, count=1)
        if not entries:
            return None
        fields = entries[0][1]
        return event_from_json(fields[b"e"]).seq, fields[b"epoch"].decode()

    def announce_epoch(self, epoch: str) -> None:
        """The leader's seq space, for followers that have no event to read it from yet."""
        self.client.set(f"{self.prefix}:epoch", epoch)

    def announced_epoch(self) -> str | None:
        value = self.client.get(f"{self.prefix}:epoch")
        return value.decode() if value else None

    def stream_length(self) -> int:
        return self.client.xlen(self.stream_key)
