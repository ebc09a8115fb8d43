"""Where every worker's stream reader stands, so the leader's appends never trim what one has not read.

The stream is capped (`MAXLEN ~ STREAM_MAXLEN`): an append past the cap trims the oldest entries. The
publisher used to wait only for its own reader, and a follower busier than the leader through a burst
over `STREAM_MAXLEN / 2` found entries gone before it read them (an outside check: 10,971 of 250,000
missed by one follower's clients). Now each reader writes its position into one hash,
`<prefix>:readers` (field: the worker's name; value: `<report no> <seq> <epoch>`) every `REPORT_S` or
every eighth of the cap while it reads, and after every empty blocking read (each `read_block_ms` while
idle), and
the publisher appends only while the slowest live reader of its epoch is within half the cap.

A reader is live while its report keeps changing: the publisher remembers, on its own monotonic clock,
when it last saw each field change (the report number goes up on every write), so hosts' clocks need not
agree. A field unchanged for `stale_s` is a dead or stalled worker and is not waited for (its gap, if it
comes back, is told to its clients: see `Bus.on_gap`); one unchanged for `FORGET_AFTER` × `stale_s` is
deleted; until then the publisher asks before every append, so one that comes back is waited for at once
(an outside check: asked only when its cached floor ran out, the publisher went on half a stream past a
returning reader and trimmed what it had still to read). The hash's values come from Redis and are parsed
as hostile: anything unreadable is ignored.
"""

import logging
import time
from typing import Callable

import redis

log = logging.getLogger(__name__)

REPORT_S = 0.1  # a reading reader writes its position at most this often
FORGET_AFTER = 12  # a field unchanged for this many stale_s is deleted (a worker that died without saying)
MAX_FIELDS = 4096  # more fields than any cluster has workers: the hash is not ours (read no further)
MAX_SEQ = 2**53 - 1  # a seq past this is not exact in a JavaScript client's JSON: a report beyond it is not ours


def parse(value: bytes) -> tuple[int, int, str] | None:
    """A report's (number, seq, epoch), or None when it is not one."""
    try:
        number, seq, epoch = value.decode("ascii").split(" ", 2)
        return int(number), int(seq), epoch
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None


class Readers:
    """One worker's view of the `<prefix>:readers` hash: it reports its own reader, and (on the leader)
    reads the others' positions."""

    def __init__(self, client: redis.Redis, key: str, holder: str, stale_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.key = key
        self.holder = holder
        self.stale_s = stale_s
        self.clock = clock
        self._reports = 0
        self._reported_at = -REPORT_S
        self._reported_seq = 0
        self._seen: dict[bytes, tuple[bytes, float]] = {}  # field -> (its value, when it last changed)
        self.stale = 0  # others' fields, at the last `slowest`, silent past stale_s and not yet forgotten
        # the field of the worker that lost the lease to this one -> its value then (see presume_gone)
        self._gone: dict[bytes, bytes] = {}
        self.slowest_name = ""  # whose position the last `slowest` gave (for the log)

    # -- the reader's side ----------------------------------------------------------------

    def due(self, seq: int, step: int) -> bool:
        """Time to write: REPORT_S since the last report, or `step` events read since (the publisher waits
        on what it last read, so a reader far behind reports in steps of a fraction of the stream)."""
        return seq - self._reported_seq >= step or self.clock() - self._reported_at >= REPORT_S

    def report(self, seq: int, epoch: str | None) -> None:
        """Write this reader's position (the caller handles Redis failures)."""
        self._reports += 1
        self._reported_at = self.clock()
        self._reported_seq = seq
        self.client.hset(self.key, self.holder, f"{self._reports} {seq} {epoch or ''}")

    def forget(self) -> None:
        """A worker that stops reading says so: it is not waited for."""
        self.client.hdel(self.key, self.holder)

    # -- the publisher's side -------------------------------------------------------------

    def _fields(self) -> dict[bytes, bytes] | None:
        """Every reader's report; None (said in the log) when the hash holds more than any cluster has workers."""
        if self.client.hlen(self.key) > MAX_FIELDS:
            log.error("bus: %s holds more than %d fields; no reader's position is believed", self.key, MAX_FIELDS)
            return None
        return self.client.hgetall(self.key)

    def highest(self, epoch: str | None) -> int | None:
        """The highest seq of epoch `epoch` any other reader reports, silent ones included (None: none).

        For a leader that seeded a counter Redis had lost (a restart without persistence): a follower may have
        read further than this worker before the loss, and no seq it read may be given again. A report that
        cannot be parsed, or past MAX_SEQ, is ignored."""
        fields = self._fields()
        if fields is None:
            return None
        highest = None
        for field, value in fields.items():
            report = parse(value)
            if field == self.holder.encode() or report is None or report[2] != (epoch or ""):
                continue
            if report[1] > MAX_SEQ:
                log.error("bus: a reader's report of seq %d is past any seq a client can read exactly; ignored",
                          report[1])
                continue
            if highest is None or report[1] > highest:
                highest = report[1]
        return highest

    def presume_gone(self, holder: str) -> None:
        """`holder` held the lease before this worker took it: it died, was cut off or paused, so its reader's
        report as it stands now counts as silent at once rather than after stale_s; a report it writes after
        this (it reads again) is waited for like any other. Called before the new leader's first append.
        Counted live for stale_s from when the new leader first read it, a SIGKILLed leader's last report held
        the new leader's appends once its seqs ran half the stream past it: ~5 s without delivery after every
        fail-over at 1,000 events/s or more (a CI run of the SIGKILL hand-over test)."""
        field = holder.encode()
        value = self.client.hget(self.key, field)
        self._gone = {field: value} if value is not None else {}

    def slowest(self, epoch: str | None, elsewhere: int) -> int | None:
        """The lowest seq of epoch `epoch` any other live reader has reached; None when none is live.

        A live reader still in another epoch counts as standing at `elsewhere` (the counter when the
        publisher first saw this epoch): it has this epoch's entries still to read. Sets `stale`: while a
        silent reader may come back (a stopped worker continued), its position can be below any floor
        asked before, so the caller must ask again before each append."""
        now = self.clock()
        fields = self._fields()
        if fields is None:
            return None
        lowest = None
        stale = []
        self.stale = 0
        for field, value in fields.items():
            seen = self._seen.get(field)
            if seen is None or seen[0] != value:
                # first seen now: live until it has stayed unchanged for stale_s on this clock
                self._seen[field] = seen = (value, now)
            if field == self.holder.encode():
                continue  # the publisher's own reader is read from memory
            if now - seen[1] > FORGET_AFTER * self.stale_s:
                stale.append(field)
                continue
            if field in self._gone:
                if self._gone[field] == value:
                    self.stale += 1  # silent since it lost the lease (and asked about before every append)
                    continue
                del self._gone[field]  # it reads again: waited for like any live reader
            if now - seen[1] > self.stale_s:
                self.stale += 1
                continue
            report = parse(value)
            if report is None:
                continue
            seq = report[1] if report[2] == (epoch or "") else elsewhere
            if lowest is None or seq < lowest:
                lowest, self.slowest_name = seq, field.decode("utf-8", "replace")
        for field in set(self._seen) - set(fields):
            del self._seen[field]
        if stale:
            self.client.hdel(self.key, *stale)
            log.info("bus: forgot %d reader(s) silent for over %.0f s", len(stale), FORGET_AFTER * self.stale_s)
        return lowest
