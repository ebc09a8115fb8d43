"""The Redis transport: a leader lease, a fenced append that numbers events, and a reader per worker.

Seq and epoch are assigned in one place: the append script (bus/scripts.py). It checks the
lease's token, takes the next seqs from the counter `<prefix>:seq` (a hash
holding `seq` and `epoch`) and appends the events with them, atomically. The
leader hands it events without their seq; a worker that is not the lease
holder cannot create a seq, and a leader that was paused past its lease (and
replaced) has its append refused. Every worker — the leader too — reads the
stream with blocking XREADs and resumes from its last entry id after a Redis
blip. `POST /publish` on any worker reaches the leader through a Redis list
(`request_publish` / `serve_publish_requests`); the caller gets the seqs the
script gave.
"""

import logging
import math
import secrets
import time
from typing import Callable

import gevent
import redis
from gevent.event import Event as Signal

from handlers import jsonx
from handlers.events import Event, event_from_json
from handlers.resume import MAX_HOLES, add_hole
from webapp.bus import Bus
from webapp.bus.failures import FAILURES, REFUSED, failure_text
from webapp.bus.lease import Lease, LostLease
from webapp.bus.outbox import Outbox
from webapp.bus.readers import Readers
from webapp.bus.receipt import NoLeader, Receipt
from webapp.bus.scripts import APPEND, SEED
from webapp.logs import Throttle, held_note, printable

# the names the shell imports from here (the parts above hold them)
__all__ = ["FAILURES", "LostLease", "NoLeader", "RedisBus", "Receipt", "stripped"]

log = logging.getLogger(__name__)

# Refusals Redis gives before a script's first write (it checks maxmemory and a replica's read-only state
# then, and the append script's reads come first): an append refused so has certainly not appended anything.
NOT_WRITTEN = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)


def stripped(event: Event) -> bytes:
    """The event's JSON after `{"seq":N,`: the append script writes the seq it assigns in front."""
    return event.json[len(b'{"seq":%d,' % event.seq):]


class RedisBus(Bus):
    backend = "redis"

    def __init__(self, url: str, prefix: str, holder: str, deliver: Callable[[list[Event]], None], *,
                 lease_ms: int, stream_maxlen: int, read_block_ms: int = 1000, batch_max: int = 1000,
                 publish_timeout_s: float | None = None, outbox_max: int = 50_000,
                 on_outbox_full: Callable[[], None] = lambda: None, reader_stale_s: float | None = None):
        super().__init__(deliver)
        if publish_timeout_s is None:
            # POST /publish waits as long as a leader change takes: a dead leader's lease lapses within
            # one LEADER_LEASE_MS and the next one takes over (and serves the waiting request) within another
            publish_timeout_s = 2 * lease_ms / 1000
        self.prefix = prefix
        self.stream_key = f"{prefix}:events"
        self.counter_key = f"{prefix}:seq"
        self.requests_key = f"{prefix}:publish"
        self.holes_key = f"{prefix}:holes"
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        # the blocking reader gets its own connection, with a read time-out beyond its block
        self.reader = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=read_block_ms / 1000 + 5)
        # blocking pops (publish requests and their replies) wait up to publish_timeout_s
        self.waiter = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=publish_timeout_s + 5)
        self.lease = Lease(self.client, f"{prefix}:leader", holder, lease_ms)
        self._append = self.client.register_script(APPEND)
        self._seed = self.client.register_script(SEED)
        self.stream_maxlen = stream_maxlen
        self.read_block_ms = read_block_ms
        # an append never adds more than half the cap: with the head room below, what the slowest reader
        # has not read stays within the cap after it
        self.batch_max = max(1, min(batch_max, stream_maxlen // 2))
        if reader_stale_s is None:
            reader_stale_s = max(5.0, 3 * read_block_ms / 1000)  # an idle reader reports every read_block_ms
        self.readers = Readers(self.client, f"{prefix}:readers", holder, reader_stale_s)
        self._report_step = max(1, stream_maxlen // 8)  # a reader far behind reports every eighth of the cap
        self._slowest = 0  # a lower bound of every live reader's seq (see _room)
        self.assigned_epoch: str | None = None  # the counter's epoch, from the seed and each append's answer
        self._space_start = 0
        self._slowest_asked = 0.0
        self.waits_for_readers = 0  # times the publisher began to wait for a reader, for /health
        self._waiting = False
        self._waiting_since = 0.0  # when the publisher began to wait for a reader (bus/readers.py)
        # (when, the last seq this term assigned, its epoch, the unnumbered event lists, those of an append
        # that got no answer) of a term that stopped: see set_aside
        self._aside: tuple[float, int, str | None, list[list[Event]], list[list[Event]]] | None = None
        self._in_flight: list[tuple[list[Event], Receipt | None]] | None = None  # the append being retried
        self._in_flight_uncertain = False  # one of its attempts got no answer (it may have run)
        self.publish_timeout_s = publish_timeout_s
        self.outbox = Outbox(outbox_max, on_outbox_full)
        self.unreadable = 0  # stream entries that could not be read (skipped, counted)
        self._said = Throttle()  # lines that could come once per stream entry
        self._wake = Signal()
        self.last_id = b"0-0"
        self._read_conn = None  # the reader's connection, taken from its pool once (_xread)
        self._closed = False  # close() ends run_reader
        self._xread_reply = self.reader.response_callbacks["XREAD"]  # the reply in the shape xread() gives
        self.published = 0
        self.assigned_seq = 0  # the last seq the append script gave this leader's events
        self._batches = 0
        self.on_fenced: Callable[[str], None] = lambda reason: None
        # (until when, what to call with the counter's seq before and after) while a counter seeded after Redis
        # lost it waits for the other readers' reports (see hold_for_reports)
        self._reports_hold: tuple[float, Callable[[int, int], None]] | None = None
        self._raise: tuple[int, int] | None = None  # (before, after) of that raise: no stream entry lies between
        self.last_error: str | None = None

    # -- publishing (the leader) ------------------------------------------------------

    def publish(self, events: list[Event], epoch: str | None = None, *, receipt: bool = False) -> Receipt | None:
        """Queue for the publisher greenlet; never blocks (ingest must not yield).

        The events' seqs are provisional: the append script numbers them. With
        `receipt`, the caller can wait for the seqs they really got.
        """
        ticket = Receipt(len(events)) if receipt else None
        if ticket is None and len(events) > self.batch_max:
            # a large upstream frame goes in appends of at most half the stream's cap (see _room);
            # a POST /publish body is refused above that size (routes/publish.py), its receipt whole
            for at in range(0, len(events), self.batch_max):
                self.outbox.put(events[at:at + self.batch_max], None)
            self._wake.set()
        elif self.outbox.put(events, ticket):
            self._wake.set()
        return ticket

    def wait_for_room(self) -> None:
        """The upstream reader's back-pressure: blocks while the outbox is at BUS_OUTBOX_MAX (see bus/outbox.py)."""
        self.outbox.wait_for_room()

    def discard_outbox(self, reason: str = "no longer the leader") -> int:
        return self.outbox.discard(reason)

    def set_aside(self, reason: str, first: list[tuple[list[Event], Receipt | None]] = ()) -> None:
        """Leading stopped (fenced, lease lost): the upstream's events not yet numbered — `first` (an append
        that was refused) and the outbox's — are kept aside, not dropped, for this worker's next term
        (`restore_aside`); POST /publish bodies among them fail (their callers are told "not published").
        A Redis restart shorter than the lease lost everything this leader had queued while Redis was
        away (243-405 events in an outside audit), though the same worker led again 0.6 s later."""
        in_flight, self._in_flight = self._in_flight, None  # an append the publisher retries (it is stopped next)
        unsure: list[list[Event]] = []  # its events, when an attempt got no answer: they may be numbered already
        if in_flight and not first:
            if self._in_flight_uncertain:
                unsure = [events for events, ticket in in_flight if ticket is None and events]
                first = [(events, ticket) for events, ticket in in_flight if ticket is not None]
            else:
                first = in_flight
        kept: list[list[Event]] = []
        for events, ticket in [*first, *(self.outbox.take() for _ in range(len(self.outbox)))]:
            if ticket is not None:
                if not ticket.withdrawn:
                    ticket.fail(reason)
            elif events:
                kept.append(events)
        self.outbox.append_failing_since = None
        self.outbox.append_error = None
        if not kept and not unsure:
            return
        if self._aside is None:
            self._aside = (time.monotonic(), self.assigned_seq, self.assigned_epoch, [], [])
        self._aside[3].extend(kept)
        self._aside[4].extend(unsure)
        log.warning("bus: %d queued events set aside (%s): published first if this worker leads again with "
                    "nothing numbered since, else dropped", sum(len(e) for e in kept + unsure), reason)

    def restore_aside(self, seq: int, epoch: str, max_age_s: float) -> int:
        """Just seeded as leader at `seq` of `epoch`: events set aside in the last term go first when nothing
        was numbered since (the counter is where this worker left it) and they are at most `max_age_s`
        old; otherwise they are dropped (another leader read the upstream meanwhile). Returns how many
        went back into the outbox."""
        aside, self._aside = self._aside, None
        if aside is None:
            return 0
        at, assigned, assigned_epoch, kept, unsure = aside
        n_unsure = sum(len(events) for events in unsure)
        if seq == assigned:
            groups = unsure + kept  # the unanswered append did not run, or Redis lost it: it goes first
        elif unsure and seq == assigned + n_unsure:
            groups = kept  # it ran: its events are in the stream, with their seqs
        else:
            groups = None
        n = sum(len(events) for events in (groups if groups is not None else unsure + kept))
        if groups is None or epoch != assigned_epoch or time.monotonic() - at > max_age_s:
            self.outbox.discarded += n
            log.error("bus: %d events set aside were never given a seq (another term numbered events since, "
                      "or they waited %.1f s)", n, time.monotonic() - at)
            return 0
        for events in groups:
            self.outbox.put(events, None)
        self.outbox.restored += n
        self._wake.set()
        log.info("bus: %d events set aside in the last term published first", n)
        return n

    def expire_aside(self, max_age_s: float) -> None:
        """Events set aside that no new term of this worker took within `max_age_s` are dropped."""
        if self._aside is not None and time.monotonic() - self._aside[0] > max_age_s:
            self.restore_aside(-1, "", max_age_s)

    @property
    def outbox_events(self) -> int:
        return self.outbox.events

    def run_publisher(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self.outbox:
                if not self._room():
                    gevent.sleep(0.005)  # a burst waits in the outbox (bounded: BUS_OUTBOX_MAX)
                    continue
                # taken out of the outbox first: a stop_leading during the call discards only the rest
                groups = []
                size = 0
                while self.outbox and (not groups or size + self.outbox.first_size() <= self.batch_max):
                    events, ticket = self.outbox.take()
                    if ticket is not None:
                        if ticket.withdrawn:
                            continue  # its caller was answered 503: it must never appear
                        ticket.taken = True
                    groups.append((events, ticket))
                    size += len(events)
                if not groups:
                    continue
                self._in_flight, self._in_flight_uncertain = groups, False
                appended = self._append_batch(groups)
                self._in_flight = None
                if appended is None:
                    continue  # every group was a POST /publish whose caller gave up while Redis refused
                answer, groups = appended
                size = sum(len(events) for events, _ in groups)
                if answer[0] != 1:
                    reason = "lost the leader lease" if answer[0] == 0 else "the seq counter is gone from Redis"
                    log.error("%s: %d events in this append not published", reason, size)
                    self.set_aside(reason, groups)
                    self.on_fenced(reason)
                    break
                first = int(answer[1])
                self._new_space(answer[3].decode(), first - 1)
                self.assigned_seq = max(self.assigned_seq, int(answer[2]))
                for events, ticket in groups:
                    if ticket is not None:
                        ticket.set(first)
                    first += len(events)
                self.published += size

    def hold_for_reports(self, wait_s: float | None, on_raised: Callable[[int, int], None] = lambda a, b: None) -> None:
        """After seeding a counter that Redis had lost (it restarted empty), hold this term's appends `wait_s`
        while the other workers' readers, back on Redis, report where they stand (each reports at once after a
        failed read: run_reader); then raise the counter past the highest seq any of them read in this epoch,
        and call `on_raised(before, after)` when that was above it. A follower that had read further than this
        worker before the loss would otherwise get those seqs again and drop the new events under them as
        already delivered (seqs given twice, and lost for its clients). None: no hold (a counter Redis kept)."""
        self._reports_hold = None if wait_s is None else (time.monotonic() + wait_s, on_raised)
        self._raise = None

    def _past_raise(self, seq: int) -> int:
        """A reader's position as the publisher counts it: one that stands where the counter was raised from (or
        anywhere up to where it was raised to) has nothing to read before this term's first entry."""
        raised = self._raise
        return raised[1] if raised is not None and raised[0] <= seq < raised[1] else seq

    def _raised_to_reports(self) -> bool:
        """The hold of hold_for_reports: False while it lasts (or while Redis cannot be asked)."""
        until, on_raised = self._reports_hold
        if time.monotonic() < until:
            return False
        try:
            highest = self.readers.highest(self.assigned_epoch)
            if highest is not None and highest > self.assigned_seq:
                before = self.assigned_seq
                after, _ = self.seed(highest, self.assigned_epoch)
                if after > before:
                    self._raise = (before, after)
                    on_raised(before, after)
        except FAILURES as exc:
            self._failed(exc)
            return False
        except LostLease:
            return False  # the lease watcher ends this term
        self._reports_hold = None
        return True

    def _room(self) -> bool:
        """May the next append go? Not while a live reader is more than half the stream's cap behind, or
        the append (at most half the cap) could trim entries it has not read: the store is written from what
        the leader's own reader reads back, and every follower's clients get what its reader reads.

        The others' positions are asked of Redis only when the last answer no longer leaves room (then at
        most every 20 ms while it waits): the floor it gave only rises, so between asks it is a safe lower
        bound, and the publisher asks once per half a stream of events, not per append. Not while a reader
        it knows has gone silent (bus/readers.py): it may come back below that floor, so then it asks
        before every append. A joining worker reports as soon as it has its place (`report`)."""
        if self._reports_hold is not None and not self._raised_to_reports():
            return False
        half = self.stream_maxlen // 2
        # this worker's own reader, which counts like the others: one still in another epoch (or in none:
        # an empty stream) stands where this epoch began. Counted at its 0, a leader seeded from a store past
        # half the cap (Redis restarted empty) waited for it for good: nothing was ever appended, nothing
        # delivered, /health said ok (an outside audit, 3 runs of 3)
        own = self._past_raise(self.last_seq if self.epoch == self.assigned_epoch else self._space_start)
        if self.assigned_seq - own > half:
            return False
        now = time.monotonic()
        stale = self.readers.stale  # a silent reader may come back below the floor: ask before each append
        if ((stale or self.assigned_seq - self._slowest > half)
                and (not self._waiting or now - self._slowest_asked >= 0.02)):
            self._slowest_asked = now
            try:
                slowest = self.readers.slowest(self.assigned_epoch, self._space_start)
            except FAILURES as exc:
                self._failed(exc)  # not known: the outbox waits rather than risk a trim (the append fails too)
            else:
                self._slowest = self.assigned_seq if slowest is None else self._past_raise(slowest)
        waiting = self.assigned_seq - self._slowest > half
        if waiting and not self._waiting:
            self._waiting_since = now
            self.waits_for_readers += 1
            held = self._said.allow("readers")
            if held is not None:
                log.warning("bus: the publisher waits for a reader more than half of STREAM_MAXLEN (%d) behind "
                            "(%s, at seq %d of %d)%s", self.stream_maxlen, printable(self.readers.slowest_name),
                            self._slowest, self.assigned_seq, held_note(held))
        self._waiting = waiting
        return not waiting

    def readers_wait_s(self) -> float:
        """How long the publisher has held events back for a reader more than half the cap behind (0: not)."""
        return time.monotonic() - self._waiting_since if self._waiting and self.outbox else 0.0

    def _append_batch(self, groups: list[tuple[list[Event], Receipt | None]]):
        """Run the append script over these groups until Redis answers: (its answer, the groups it covered),
        or None when every group was withdrawn while Redis refused (see NOT_WRITTEN)."""
        self._batches += 1
        batch_key = f"{self.prefix}:append:{self.lease.holder}:{self._batches}"
        uncertain = False  # an attempt got no answer: it may have run, so the batch must stay as it was sent
        while True:
            for _, ticket in groups:
                if ticket is not None:
                    ticket.taken = True  # in an append call: its caller can no longer be told "never"
            args: list = [self.lease.holder, self.stream_maxlen]
            for events, _ in groups:
                args += [stripped(event) for event in events]
            try:
                answer = self._append(keys=[self.lease.key, self.stream_key, self.counter_key, batch_key], args=args)
                self.outbox.appended()
                return answer, groups
            except FAILURES as exc:
                # the script may have run and its answer been lost: the retry names the same
                # batch, so the script answers what it did instead of appending twice
                # said by the outbox (once per 10 s while appends fail, and /health's reason); a refusal
                # is an answer: Redis is not "unavailable" (the reader and the lease loop still work)
                self.outbox.append_failed(self._note(exc))
                uncertain = uncertain or not isinstance(exc, NOT_WRITTEN)
                self._in_flight_uncertain = uncertain
                if not uncertain:
                    for _, ticket in groups:
                        if ticket is not None:
                            ticket.taken = False  # surely not in the stream: its caller may still withdraw it
            gevent.sleep(0.2)
            if not uncertain:
                groups = [(events, ticket) for events, ticket in groups if ticket is None or not ticket.withdrawn]
                self._in_flight = groups
                if not groups:
                    return None

    def seed(self, floor: int, epoch: str) -> tuple[int, str]:
        """Make sure the counter exists (fenced); returns the seq and epoch it holds."""
        answer = self._seed(keys=[self.lease.key, self.counter_key], args=[self.lease.holder, floor, epoch])
        if answer[0] != 1:
            raise LostLease("the lease was taken before the seq space was seeded")
        self.assigned_seq = int(answer[1])
        self._new_space(answer[2].decode(), self.assigned_seq)
        return int(answer[1]), answer[2].decode()

    def _new_space(self, epoch: str, seq: int) -> None:
        """The counter's epoch as this leader knows it; a reader still in another epoch counts as standing at
        `seq`, the counter when this leader saw the epoch first (it must read on into this one)."""
        if epoch != self.assigned_epoch:
            self.assigned_epoch, self._space_start, self._slowest = epoch, seq, 0

    def counter(self) -> tuple[int | None, str | None]:
        """The seq counter's state: (last seq, epoch), (None, None) when Redis has none."""
        seq, epoch = self.client.hmget(self.counter_key, ["seq", "epoch"])
        return (int(seq) if seq is not None else None), (epoch.decode() if epoch is not None else None)

    # -- POST /publish on any worker ----------------------------------------------------

    def request_publish(self, body: bytes, recv_ms: int) -> list[int]:
        """Hand a frame to the leader and wait for its seqs; NoLeader when none can answer."""
        if self.lease.current_holder() is None:
            raise NoLeader("no leader is known (the lease is free): retry in a moment")
        ident = secrets.token_hex(8)
        deadline_ms = int(time.time() * 1000 + self.publish_timeout_s * 1000)
        request = jsonx.dumps({"id": ident, "recv_ms": recv_ms, "deadline_ms": deadline_ms,
                               "body": body.decode("utf-8", "surrogateescape")})
        reply_key = f"{self.requests_key}:reply:{ident}"
        self.client.rpush(self.requests_key, request)
        self.client.pexpire(self.requests_key, int(self.publish_timeout_s * 4000))
        answer = self.waiter.blpop([reply_key], timeout=max(1, math.ceil(self.publish_timeout_s)))
        if answer is None:
            raise NoLeader(f"the leader did not answer within {self.publish_timeout_s:g} s (2 x LEADER_LEASE_MS)")
        reply = jsonx.loads(answer[1])
        if "error" in reply:
            raise NoLeader(reply["error"])
        return reply["seqs"]

    def serve_publish_requests(self, handle: Callable[[bytes, int], list[int]]) -> None:
        """The leader's loop: take requests from any worker, publish them, reply with the seqs."""
        while True:
            try:
                self.serve_publish_request(handle, timeout_s=1)
            except FAILURES as exc:
                self._failed(exc)
                gevent.sleep(0.5)

    def serve_publish_request(self, handle: Callable[[bytes, int], list[int]], timeout_s: float) -> bool:
        """Serve one request if one comes within `timeout_s`; True when one was answered."""
        answer = self.waiter.blpop([self.requests_key], timeout=timeout_s)
        if answer is None:
            return False
        try:
            request = jsonx.loads(answer[1])
            ident, body = str(request["id"]), request["body"].encode("utf-8", "surrogateescape")
            recv_ms, deadline_ms = int(request["recv_ms"]), int(request["deadline_ms"])
        except (jsonx.NotJSON, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error("bus: unreadable publish request: %s", exc)
            return False
        if time.time() * 1000 >= deadline_ms:
            return False  # its caller has been told it failed: publishing it now would make that a lie
        try:
            reply = {"seqs": handle(body, recv_ms)}
        except NoLeader as exc:
            reply = {"error": str(exc)}
        key = f"{self.requests_key}:reply:{ident}"
        self.client.rpush(key, jsonx.dumps(reply))
        self.client.pexpire(key, int(self.publish_timeout_s * 2000))
        return True

    # -- holes: seq ranges the store lacks for good, the same for every worker ----------

    def add_hole(self, epoch: str, first: int, last: int) -> None:
        self.client.rpush(f"{self.holes_key}:{epoch}", f"{first}-{last}")
        self.client.ltrim(f"{self.holes_key}:{epoch}", -MAX_HOLES, -1)

    def holes(self, epoch: str) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        for item in self.client.lrange(f"{self.holes_key}:{epoch}", 0, -1):
            first, _, last = item.decode().partition("-")
            ranges = add_hole(ranges, int(first), int(last))
        return ranges

    # -- reading (every worker) --------------------------------------------------------

    def run_reader(self) -> None:
        while not self._closed:
            if not self.ok:
                # back after a failure: say at once where this reader stands (a leader that seeds a counter Redis
                # lost waits for these reports: hold_for_reports), not after the next blocking read
                self.report()
            try:
                answer = self._xread()
            except Exception as exc:  # noqa: BLE001  (see _closed_or_failed)
                if self._closed_or_failed(exc):
                    return
                gevent.sleep(0.5)
                continue
            if not self.ok:
                log.info("bus: Redis answers again; reading from %s", self.last_id.decode())
            self.ok = True
            self.last_error = None
            for _stream, entries in answer or ():
                self._take(entries)
            if not answer or self.readers.due(self.last_seq, self._report_step):
                self.report()

    def report(self) -> None:
        """Write where this reader stands, for the leader's publisher (bus/readers.py); a joining worker
        calls it before its reader's first read, so the leader's floor includes it from then on."""
        try:
            self.readers.report(self.last_seq, self.epoch)
        except Exception as exc:  # noqa: BLE001  (see _closed_or_failed)
            self._closed_or_failed(exc)

    def _closed_or_failed(self, exc: Exception) -> bool:
        """A reader's Redis call raised: True when close() cut it off (whatever the socket said then, it is
        over: redis-py may raise AttributeError on a pool disconnected under it); else a Redis failure,
        recorded (anything else is raised)."""
        if self._closed:
            return True
        if not isinstance(exc, FAILURES):
            raise exc
        self._failed(exc)
        return False

    def _xread(self):
        """One blocking XREAD from `last_id` on the reader's own connection, held between reads.

        Not `self.reader.xread(...)`: each call of that takes a connection from the pool, goes
        through the retry and deprecation layers and gives it back, and on a follower at 200
        events/s those layers took more of its time than handling the events they brought
        (py-spy). Seven workers on 2 cores, 14 clients at 200 events/s: the workers at
        53.8-76.4 % of a core with this against 55.5-91.8 % (lower in 7 of 7 interleaved rounds,
        medians 64.7 against 78.5; docs/benchmarks.md, "The bus reader's connection held").
        The command, the reply's parsing and its shape (the client's own XREAD callback) are
        the library's; a failure drops the connection and the next read opens another."""
        conn = self._read_conn
        if conn is None:
            conn = self._read_conn = self.reader.connection_pool.get_connection()
        try:
            conn.send_command("XREAD", "COUNT", self.batch_max, "BLOCK", self.read_block_ms, "STREAMS",
                              self.stream_key, self.last_id)
            raw = conn.read_response()
        except BaseException:
            self._drop_read_conn()
            raise
        return self._xread_reply(raw)

    def _drop_read_conn(self) -> None:
        """Close the reader's held connection and give it back to its pool; the next read opens another."""
        conn, self._read_conn = self._read_conn, None
        if conn is not None:
            conn.disconnect()
            self.reader.connection_pool.release(conn)

    def _take(self, entries) -> None:
        events: list[Event] = []
        epoch = None
        counter: tuple[int | None, str | None] | None = None  # read once per batch, and only if needed
        expect_epoch, expect_seq = self.epoch, self.last_seq
        for entry_id, fields in entries:
            self.last_id = entry_id
            read = self._read_entry(entry_id, fields)
            if read is None:
                continue
            entry_epoch, event = read
            if entry_epoch != expect_epoch or event.seq > expect_seq + 1:
                # not simply the next one (another epoch, a jump): is it one the counter gave?
                if counter is None:
                    counter = self._counter_or_unknown()
                if self._never_numbered(entry_id, entry_epoch, event, counter):
                    continue
                expect_epoch, expect_seq = entry_epoch, event.seq
            else:
                expect_seq = max(expect_seq, event.seq)
            if epoch is not None and entry_epoch != epoch:
                self.received(events, epoch)
                events = []
            epoch = entry_epoch
            events.append(event)
        if events:
            self.received(events, epoch)

    def _read_entry(self, entry_id: bytes, fields, report: bool = True) -> tuple[str, Event] | None:
        """One stream entry's epoch and event; None for an entry that is not ours (a corrupt or hostile
        Redis, a foreign writer): skipped, counted, logged at most every 10 s (unless not `report`)."""
        try:
            return fields[b"epoch"].decode(), event_from_json(fields[b"e"])
        except (jsonx.NotJSON, KeyError, ValueError, TypeError, AttributeError) as exc:
            if report:
                self._unreadable(entry_id, exc)
            return None

    def _counter_or_unknown(self) -> tuple[int | None, str | None]:
        try:
            return self.counter()
        except FAILURES as exc:  # unknown: the entry is taken as it is rather than the reader stopping
            log.warning("bus: could not read the seq counter to check an entry: %s", failure_text(exc))
            return None, None

    def _never_numbered(self, entry_id: bytes, epoch: str, event: Event, counter) -> bool:
        """An entry whose epoch is not the counter's, or whose seq is past it, was not appended by the script
        (which numbers and appends in one step, so the counter is never behind the stream): skipped and
        counted like an unreadable one. One such entry with another epoch made every worker drop its cache,
        go back to seq 3 and stop delivering; one far ahead made them drop every real event after it (an
        outside audit). With the counter unknown (Redis lost it, or did not answer), the entry is taken.
        A reader that lags across two epoch changes skips the middle one's entries this way."""
        counter_seq, counter_epoch = counter
        if counter_seq is None or (epoch == counter_epoch and event.seq <= counter_seq):
            return False
        self._unreadable(entry_id, ValueError(f"seq {event.seq} of epoch {epoch!r} was never numbered (the counter "
                                              f"holds {counter_seq} of {counter_epoch!r})"))
        return True

    def _unreadable(self, entry_id: bytes, exc: Exception) -> None:
        self.unreadable += 1
        held = self._said.allow("unreadable")
        if held is not None:
            log.error("bus: unreadable stream entry %r skipped: %s: %s%s", entry_id, type(exc).__name__, exc,
                      held_note(held))

    def _failed(self, exc: Exception) -> None:
        """A Redis call of the reader, the lease loop or a take-over failed. A refusal (READONLY, OOM) is an
        answer: Redis is there, so `ok` stays (no "unavailable" flapping against the reader's next good read);
        said at most once per 10 s. No answer at all: `ok` false, said once per outage."""
        was_unavailable = not self.ok and (self.last_error or "").startswith("unavailable")
        text = self._note(exc)
        if isinstance(exc, REFUSED):
            held = self._said.allow("refused")
            if held is not None:
                log.error("bus: Redis %s%s", text, held_note(held))
        elif not was_unavailable:
            log.error("bus: Redis %s", text)  # once per outage, not per retry

    def _note(self, exc: Exception) -> str:
        """Record a failed call: its text in `last_error`; `ok` false only when Redis did not answer
        (a refusal is an answer). Returns the text."""
        self.last_error = failure_text(exc)
        if not isinstance(exc, REFUSED):
            self.ok = False
        return self.last_error

    # -- state for a new leader or a starting worker ---------------------------------

    def tail(self, count: int) -> tuple[list[Event], str | None, bytes]:
        """The newest `count` events of the stream's current epoch, ascending, that epoch, and the last entry id."""
        entries = self.client.xrevrange(self.stream_key, count=count)
        if not entries:
            return [], None, b"0-0"
        counter = self.counter()
        epoch = None
        events = []
        for entry_id, fields in entries:
            read = self._read_entry(entry_id, fields)
            # of the counter's epoch, past its seq: never numbered (an older epoch's entries are ended below)
            if read is None or (read[0] == counter[1] and self._never_numbered(entry_id, read[0], read[1], counter)):
                continue
            if epoch is not None and read[0] != epoch:
                break  # older entries belong to another seq space
            epoch = read[0]
            events.append(read[1])
        events.reverse()
        return events, epoch, entries[0][0]

    def newest(self) -> tuple[int, str] | None:
        """The seq and epoch of the stream's newest entry (None when it is empty or that entry is unreadable;
        asked per /health, so not counted: the reader counts each entry once)."""
        entries = self.client.xrevrange(self.stream_key, count=1)
        if not entries:
            return None
        read = self._read_entry(*entries[0], report=False)
        return None if read is None else (read[1].seq, read[0])

    def announced_epoch(self) -> str | None:
        """The leader's seq space, for followers that have no event to read it from yet."""
        return self.counter()[1]

    def close(self) -> None:
        self._closed = True
        self._drop_read_conn()
        try:
            self.readers.forget()  # a worker that stops reading is not waited for
        except FAILURES as exc:
            log.warning("bus: could not remove this reader's position: %s", failure_text(exc))
        for client in (self.client, self.reader, self.waiter):
            client.connection_pool.disconnect()

    def stream_length(self) -> int:
        return self.client.xlen(self.stream_key)
